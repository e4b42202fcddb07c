//! Rate limits and claims in process memory: the backend for a single node, and what each node
//! counts its rate limits with while the shared backend cannot be reached.
//!
//! Both maps sit behind one mutex; each call does a few hash-map operations under it. Entries are
//! dropped lazily: an expired entry means the same as a missing one, and whenever a map has grown
//! to twice its size after the last sweep, the expired entries are swept out. That bounds memory
//! by the live entries at an amortised constant cost per call.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Coordination, CoordinationError, Quota, RateDecision};

/// Maps smaller than this are never swept; sweeping them would cost more than it frees.
const MIN_SWEEP: usize = 1024;

/// Rate limits and claims of one process. See the module docs.
#[derive(Default)]
pub struct MemoryCoordination {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// rate key → theoretical arrival time of the next request (GCRA).
    rates: Expiring<Instant>,
    claims: Expiring<Claim>,
}

struct Claim {
    value: String,
    expires: Instant,
}

impl MemoryCoordination {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent at each step, so the state a panicking
        // caller left behind is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Coordination::check_rate`], which in memory cannot fail.
    ///
    /// GCRA: requests are spaced `T = period / limit` apart on average, and may run ahead of
    /// that schedule by up to `period - T`, which is a burst of `limit`. A quota of zero allows
    /// nothing.
    pub fn count(&self, key: &str, quota: Quota) -> RateDecision {
        if quota.limit == 0 {
            return RateDecision::Limited { retry_after: quota.period };
        }
        let interval = quota.period / quota.limit;
        let now = Instant::now();
        let mut state = self.state();
        let tat = state.rates.entries.get(key).copied().unwrap_or(now).max(now);
        // How far this request would put the key ahead of schedule.
        let ahead = tat.saturating_duration_since(now) + interval;
        if ahead > quota.period {
            return RateDecision::Limited { retry_after: ahead - quota.period };
        }
        state.rates.insert(key, tat + interval, now, rate_expired);
        RateDecision::Allowed
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
impl Coordination for MemoryCoordination {
    async fn check_rate(&self, key: &str, quota: Quota) -> Result<RateDecision, CoordinationError> {
        Ok(self.count(key, quota))
    }

    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, CoordinationError> {
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
    ) -> Result<(), CoordinationError> {
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
    ) -> Result<bool, CoordinationError> {
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

    async fn release_claims(&self, keys: &[&str]) -> Result<(), CoordinationError> {
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
    use crate::coordination::conformance;

    #[tokio::test]
    async fn rate_limits_follow_gcra() -> Result<(), CoordinationError> {
        conformance::rate_limits_follow_gcra(&MemoryCoordination::default()).await
    }

    #[tokio::test]
    async fn claims_hold_until_released_or_expired() -> Result<(), CoordinationError> {
        conformance::claims_hold_until_released_or_expired(&MemoryCoordination::default()).await
    }

    #[tokio::test]
    async fn expired_entries_are_swept_out() -> Result<(), CoordinationError> {
        let coordination = MemoryCoordination::default();
        let quota = Quota { limit: 10, period: Duration::from_millis(10) };
        let short = Duration::from_millis(10);
        // The live claim goes in first, so that no sweep can run before the last insert below.
        coordination.claim("kept", "v", Duration::from_secs(60)).await?;
        for i in 0..MIN_SWEEP {
            coordination.count(&format!("rate-{i}"), quota);
        }
        for i in 1..MIN_SWEEP {
            coordination.claim(&format!("claim-{i}"), "v", short).await?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The next insert into each full map sweeps it.
        coordination.count("one-more", quota);
        coordination.claim("one-more", "v", short).await?;
        let state = coordination.state();
        assert_eq!(state.rates.entries.len(), 1);
        assert_eq!(state.claims.entries.len(), 2);
        assert!(state.claims.entries.contains_key("kept"));
        Ok(())
    }

    #[test]
    fn a_zero_quota_allows_nothing() {
        let quota = Quota { limit: 0, period: Duration::from_secs(1) };
        let decision = MemoryCoordination::default().count("k", quota);
        assert_eq!(decision, RateDecision::Limited { retry_after: Duration::from_secs(1) });
    }
}
