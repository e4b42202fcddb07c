//! Presence, rate limits and claims in process memory: the backend for a single node.
//!
//! Everything sits behind one mutex. Each call does a few hash-map operations under it, which is
//! far cheaper than the network round trip the Redis backend pays for the same call, so the lock
//! is not worth splitting.
//!
//! Rate-limit and claim entries are dropped lazily: an expired entry means the same as a missing
//! one, and whenever a map has grown to twice its size after the last sweep, the expired entries
//! are swept out. That bounds memory by the live entries at an amortised constant cost per call.
//! Sessions are not swept: each one belongs to a connection whose end closes it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchboard_schemas::UserId;

use super::{Presence, PresenceError, Quota, RateDecision, Status};

/// How long the local node counts as live after [`MemoryPresence::new`] without a renewal. The
/// caller renews it (with [`Presence::renew_lease`]) well within this, as it would in Redis.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Maps smaller than this are never swept; sweeping them would cost more than it frees.
const MIN_SWEEP: usize = 1024;

/// Presence state of one process. See the module docs.
pub struct MemoryPresence {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// user → session id → the node holding the session.
    sessions: HashMap<UserId, HashMap<String, String>>,
    /// node → when its lease runs out.
    leases: HashMap<String, Instant>,
    /// rate key → theoretical arrival time of the next request (GCRA).
    rates: Expiring<Instant>,
    claims: Expiring<Claim>,
}

struct Claim {
    value: String,
    expires: Instant,
}

impl MemoryPresence {
    /// Presence for the node `node_id`, whose lease starts out live for [`DEFAULT_LEASE`].
    pub fn new(node_id: &str) -> MemoryPresence {
        let mut state = State::default();
        state.leases.insert(node_id.to_owned(), Instant::now() + DEFAULT_LEASE);
        MemoryPresence { state: Mutex::new(state) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent at each step, so the state a panicking
        // caller left behind is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn online(&self, user: UserId, now: Instant) -> bool {
        self.sessions.get(&user).is_some_and(|sessions| {
            sessions.values().any(|node| self.leases.get(node).is_some_and(|&until| until > now))
        })
    }
}

/// A map whose entries stop counting at a deadline and are swept out in bulk.
struct Expiring<V> {
    entries: HashMap<String, V>,
    sweep_at: usize,
}

impl<V> Default for Expiring<V> {
    fn default() -> Self {
        Expiring { entries: HashMap::new(), sweep_at: MIN_SWEEP }
    }
}

impl<V> Expiring<V> {
    /// Inserts `value`, first dropping every entry `expired` says is gone if the map has grown
    /// enough since the last sweep.
    fn insert(&mut self, key: &str, value: V, now: Instant, expired: impl Fn(&V, Instant) -> bool) {
        if self.entries.len() >= self.sweep_at {
            self.entries.retain(|_, v| !expired(v, now));
            self.sweep_at = (self.entries.len() * 2).max(MIN_SWEEP);
        }
        self.entries.insert(key.to_owned(), value);
    }
}

fn claim_expired(claim: &Claim, now: Instant) -> bool {
    claim.expires <= now
}

/// A theoretical arrival time in the past means the key has its full burst again, the same as a
/// key never seen.
fn rate_expired(tat: &Instant, now: Instant) -> bool {
    *tat <= now
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn open_session(
        &self,
        user: UserId,
        session_id: &str,
        node_id: &str,
    ) -> Result<bool, PresenceError> {
        let now = Instant::now();
        let mut state = self.state();
        let was_online = state.online(user, now);
        state.sessions.entry(user).or_default().insert(session_id.to_owned(), node_id.to_owned());
        Ok(!was_online && state.online(user, now))
    }

    async fn close_session(&self, user: UserId, session_id: &str) -> Result<bool, PresenceError> {
        let now = Instant::now();
        let mut state = self.state();
        let was_online = state.online(user, now);
        if let Some(sessions) = state.sessions.get_mut(&user) {
            sessions.remove(session_id);
            if sessions.is_empty() {
                state.sessions.remove(&user);
            }
        }
        Ok(was_online && !state.online(user, now))
    }

    async fn status(&self, users: &[UserId]) -> Result<Vec<Status>, PresenceError> {
        let now = Instant::now();
        let state = self.state();
        Ok(users
            .iter()
            .map(|&user_id| Status { user_id, online: state.online(user_id, now) })
            .collect())
    }

    async fn renew_lease(&self, node_id: &str, lease: Duration) -> Result<(), PresenceError> {
        let until = Instant::now() + lease;
        self.state().leases.insert(node_id.to_owned(), until);
        Ok(())
    }

    /// GCRA: requests are spaced `T = period / limit` apart on average, and may run ahead of
    /// that schedule by up to `period - T`, which is a burst of `limit`. A quota of zero allows
    /// nothing.
    async fn check_rate(&self, key: &str, quota: Quota) -> Result<RateDecision, PresenceError> {
        if quota.limit == 0 {
            return Ok(RateDecision::Limited { retry_after: quota.period });
        }
        let interval = quota.period / quota.limit;
        let now = Instant::now();
        let mut state = self.state();
        let tat = state.rates.entries.get(key).copied().unwrap_or(now).max(now);
        // How far this request would put the key ahead of schedule.
        let ahead = tat.saturating_duration_since(now) + interval;
        if ahead > quota.period {
            return Ok(RateDecision::Limited { retry_after: ahead - quota.period });
        }
        state.rates.insert(key, tat + interval, now, rate_expired);
        Ok(RateDecision::Allowed)
    }

    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, PresenceError> {
        let now = Instant::now();
        let mut state = self.state();
        if let Some(claim) = state.claims.entries.get(key).filter(|c| !claim_expired(c, now)) {
            return Ok(Some(claim.value.clone()));
        }
        let claim = Claim { value: value.to_owned(), expires: now + ttl };
        state.claims.insert(key, claim, now, claim_expired);
        Ok(None)
    }

    async fn update_claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let now = Instant::now();
        let claim = Claim { value: value.to_owned(), expires: now + ttl };
        self.state().claims.insert(key, claim, now, claim_expired);
        Ok(())
    }

    async fn replace_claim(
        &self,
        key: &str,
        seen: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, PresenceError> {
        let now = Instant::now();
        let mut state = self.state();
        let held = state.claims.entries.get(key).filter(|c| !claim_expired(c, now));
        if held.is_none_or(|claim| claim.value != seen) {
            return Ok(false);
        }
        let claim = Claim { value: value.to_owned(), expires: now + ttl };
        state.claims.insert(key, claim, now, claim_expired);
        Ok(true)
    }

    async fn release_claims(&self, keys: &[&str]) -> Result<(), PresenceError> {
        let mut state = self.state();
        for key in keys {
            state.claims.entries.remove(*key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::conformance;

    const NODE: &str = "local-node";

    #[tokio::test]
    async fn sessions_come_and_go_on_edges() -> Result<(), PresenceError> {
        conformance::sessions_come_and_go_on_edges(&MemoryPresence::new(NODE), NODE).await
    }

    #[tokio::test]
    async fn rate_limits_follow_gcra() -> Result<(), PresenceError> {
        conformance::rate_limits_follow_gcra(&MemoryPresence::new(NODE)).await
    }

    #[tokio::test]
    async fn claims_hold_until_released_or_expired() -> Result<(), PresenceError> {
        conformance::claims_hold_until_released_or_expired(&MemoryPresence::new(NODE)).await
    }

    #[tokio::test]
    async fn a_lapsed_lease_takes_its_users_offline() -> Result<(), PresenceError> {
        conformance::a_lapsed_lease_takes_its_users_offline(&MemoryPresence::new(NODE), NODE).await
    }

    #[tokio::test]
    async fn the_local_node_is_live_from_the_start() -> Result<(), PresenceError> {
        let presence = MemoryPresence::new(NODE);
        assert!(presence.open_session(UserId(1), "s", NODE).await?);
        // A node that never took a lease holds nobody online.
        assert!(!presence.open_session(UserId(2), "s", "stranger").await?);
        let status = presence.status(&[UserId(1), UserId(2)]).await?;
        assert_eq!(status.iter().map(|s| s.online).collect::<Vec<_>>(), [true, false]);
        Ok(())
    }

    #[tokio::test]
    async fn expired_entries_are_swept_out() -> Result<(), PresenceError> {
        let presence = MemoryPresence::new(NODE);
        let quota = Quota { limit: 10, period: Duration::from_millis(10) };
        let short = Duration::from_millis(10);
        // The live claim goes in first, so that no sweep can run before the last insert below.
        presence.claim("kept", "v", Duration::from_secs(60)).await?;
        for i in 0..MIN_SWEEP {
            presence.check_rate(&format!("rate-{i}"), quota).await?;
        }
        for i in 1..MIN_SWEEP {
            presence.claim(&format!("claim-{i}"), "v", short).await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The next insert into each full map sweeps it.
        presence.check_rate("one-more", quota).await?;
        presence.claim("one-more", "v", short).await?;
        let state = presence.state();
        assert_eq!(state.rates.entries.len(), 1);
        assert_eq!(state.claims.entries.len(), 2);
        assert!(state.claims.entries.contains_key("kept"));
        Ok(())
    }

    #[tokio::test]
    async fn a_zero_quota_allows_nothing() -> Result<(), PresenceError> {
        let presence = MemoryPresence::new(NODE);
        let quota = Quota { limit: 0, period: Duration::from_secs(1) };
        let decision = presence.check_rate("k", quota).await?;
        assert_eq!(decision, RateDecision::Limited { retry_after: Duration::from_secs(1) });
        Ok(())
    }
}
