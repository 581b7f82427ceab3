//! Switchyard's own HTTP headers: those a client sends to steer the routing,
//! read into [`Hints`] here, and those every answer carries (route, reason,
//! score, cost, degradation, escalation; the backend is in [`super::BACKEND`]).

use axum::http::{HeaderMap, HeaderName};

use crate::openai::error::ApiError;
use crate::outcome::Tier;
use crate::routing::Hints;

pub const ROUTE: HeaderName = HeaderName::from_static("x-switchyard-route");
pub const SCORE: HeaderName = HeaderName::from_static("x-switchyard-score");
pub const REASON: HeaderName = HeaderName::from_static("x-switchyard-reason");
pub const COST: HeaderName = HeaderName::from_static("x-switchyard-cost-usd");
pub const DEGRADED: HeaderName = HeaderName::from_static("x-switchyard-degraded");
pub const ESCALATED_FROM: HeaderName = HeaderName::from_static("x-switchyard-escalated-from");
pub const TIER_OVERRIDE: HeaderName = HeaderName::from_static("x-switchyard-tier");
pub const MAX_COST: HeaderName = HeaderName::from_static("x-switchyard-max-cost-usd");
pub const SESSION: HeaderName = HeaderName::from_static("x-switchyard-session");

/// The routing hints of a request's headers; a malformed one is a 400 naming it.
pub fn hints(headers: &HeaderMap) -> Result<Hints, ApiError> {
    let text = |name: &HeaderName| -> Result<Option<&str>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::trim)
                    .map_err(|_| ApiError::invalid(format!("Header {name} must be ASCII."), name.as_str()))
            })
            .transpose()
    };
    let tier = text(&TIER_OVERRIDE)?
        .map(|t| {
            Tier::parse(t).ok_or_else(|| {
                ApiError::invalid(
                    format!("Header {TIER_OVERRIDE} must be local, local-reasoning or remote."),
                    TIER_OVERRIDE.as_str(),
                )
            })
        })
        .transpose()?;
    let max_cost_usd = text(&MAX_COST)?
        .map(|t| {
            t.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("Header {MAX_COST} must be a non-negative number of USD."),
                        MAX_COST.as_str(),
                    )
                })
        })
        .transpose()?;
    let session = text(&SESSION)?
        .map(|s| {
            if (1..=256).contains(&s.len()) {
                Ok(s.to_string())
            } else {
                Err(ApiError::invalid(
                    format!("Header {SESSION} must be 1 to 256 characters."),
                    SESSION.as_str(),
                ))
            }
        })
        .transpose()?;
    Ok(Hints {
        tier,
        max_cost_usd,
        session,
    })
}
