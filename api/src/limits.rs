//! Rate limits, checked against the shared presence backend so they hold across API nodes.

use switchboard_projector::presence::RateDecision;

use crate::config::Rate;
use crate::error::ApiError;
use crate::state::AppState;

/// Which limit a request counts against; the name keeps the buckets apart.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    Auth,
    Messages,
    General,
    Strict,
    /// Typing indicators: a bucket of their own at the messages rate, so that typing never
    /// uses up the budget for sending.
    Typing,
    /// Starting calls and rooms: a bucket of its own at the messages rate.
    Calls,
    /// WebRTC signalling, which comes in bursts while a call connects.
    Signals,
    /// Live location shares and moves: a device reports its position often, and that must
    /// not use up the budget for sending either.
    Locations,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Limit::Auth => "auth",
            Limit::Messages => "messages",
            Limit::General => "general",
            Limit::Strict => "strict",
            Limit::Typing => "typing",
            Limit::Calls => "calls",
            Limit::Signals => "signals",
            Limit::Locations => "locations",
        }
    }

    fn rate(self, state: &AppState) -> Rate {
        let config = &state.config;
        match self {
            Limit::Auth => config.rate_auth,
            Limit::Messages | Limit::Typing | Limit::Calls => config.rate_messages,
            Limit::Signals => config.rate_signals,
            Limit::General => config.rate_general,
            Limit::Strict => config.rate_strict,
            Limit::Locations => config.rate_locations,
        }
    }
}

/// Counts one request by `who` (a user id or a client IP) against `limit`.
///
/// When the presence backend is down the request is let through: an outage of shared state
/// must not stop messaging, and the log still records everything.
pub async fn check(state: &AppState, limit: Limit, who: &str) -> Result<(), ApiError> {
    let Some(quota) = limit.rate(state).0 else {
        return Ok(());
    };
    let key = format!("rate:{}:{who}", limit.name());
    match state.presence.check_rate(&key, quota).await {
        Ok(RateDecision::Allowed) => Ok(()),
        Ok(RateDecision::Limited { retry_after }) => {
            metrics::counter!("rate_limited_total", "limit" => limit.name()).increment(1);
            Err(ApiError::rate_limited(retry_after))
        }
        Err(error) => {
            tracing::warn!(%error, "rate limit not checked: presence backend unavailable");
            Ok(())
        }
    }
}
