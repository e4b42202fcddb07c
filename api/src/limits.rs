//! Rate limits, checked against the shared coordination backend so they hold across API nodes.
//!
//! While that backend is down, each node counts on its own: a user could then make as many
//! requests as the limit allows on every node, but no more, where letting requests through
//! would leave a flood unchecked exactly when the backends are weakest.

use crate::config::Rate;
use crate::coordination::RateDecision;
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
    /// Message edits and deletes.
    Edits,
    /// Read receipts.
    Receipts,
    /// WebSocket connections opened by one user.
    Sockets,
    /// WebSocket connections opened from one client IP.
    SocketsFromIp,
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
            Limit::Edits => "edits",
            Limit::Receipts => "receipts",
            Limit::Sockets => "sockets",
            Limit::SocketsFromIp => "sockets_ip",
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
            Limit::Edits => config.rate_edits,
            Limit::Receipts => config.rate_receipts,
            Limit::Sockets => config.rate_sockets,
            Limit::SocketsFromIp => config.rate_sockets_ip,
        }
    }
}

/// Counts one request by `who` (a user id or a client IP) against `limit`.
pub async fn check(state: &AppState, limit: Limit, who: &str) -> Result<(), ApiError> {
    let Some(quota) = limit.rate(state).0 else {
        return Ok(());
    };
    let key = format!("rate:{}:{who}", limit.name());
    let decision = match state.coordination.check_rate(&key, quota).await {
        Ok(decision) => decision,
        Err(error) => {
            tracing::warn!(%error, "rate limits counted on this node alone");
            metrics::counter!("rate_checks_local_total").increment(1);
            state.local_limits.count(&key, quota)
        }
    };
    match decision {
        RateDecision::Allowed => Ok(()),
        RateDecision::Limited { retry_after } => {
            metrics::counter!("rate_limited_total", "limit" => limit.name()).increment(1);
            Err(ApiError::rate_limited(retry_after))
        }
    }
}
