//! Rate limits and claims in Redis, shared by every API node using it.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}rate:KEY` | string, TTL until it no longer matters | GCRA theoretical arrival time, µs |
//! | `{P}claim:KEY` | string, TTL = the claim's | the claim's value |
//!
//! `{P}` is the URL's prefix. Each call is one command, or one script on its one key, so limits
//! and claims hold however many nodes call at once. While Redis is away, calls fail within the
//! client's call timeout (see [`RedisClient`]).

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use switchboard_projector::redis_client::{RedisClient, RedisConfig, RedisFailure, millis};

use super::{Coordination, CoordinationError, Quota, RateDecision};

pub struct RedisCoordination {
    redis: RedisClient,
    prefix: String,
    check_rate: Script,
    replace_claim: Script,
}

impl RedisCoordination {
    /// Coordination through the Redis at `url`. Fails only for a URL that cannot be used: Redis
    /// need not be up, and until it answers every call fails as unavailable.
    pub fn connect(url: &str) -> Result<RedisCoordination, CoordinationError> {
        RedisCoordination::with_config(&RedisConfig::from_url(url)?)
    }

    fn with_config(config: &RedisConfig) -> Result<RedisCoordination, CoordinationError> {
        Ok(RedisCoordination {
            redis: RedisClient::new(config)?,
            prefix: config.prefix.clone(),
            check_rate: Script::new(include_str!("scripts/check_rate.lua")),
            replace_claim: Script::new(include_str!("scripts/replace_claim.lua")),
        })
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }
}

impl From<RedisFailure> for CoordinationError {
    fn from(RedisFailure(reason): RedisFailure) -> CoordinationError {
        CoordinationError::Unavailable(reason)
    }
}

#[async_trait]
impl Coordination for RedisCoordination {
    /// GCRA as in the in-process backend (burst = limit, a zero quota allows nothing), computed
    /// by `scripts/check_rate.lua` on Redis's clock, in microseconds.
    async fn check_rate(&self, key: &str, quota: Quota) -> Result<RateDecision, CoordinationError> {
        if quota.limit == 0 {
            return Ok(RateDecision::Limited { retry_after: quota.period });
        }
        let in_micros =
            |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        // An interval below a microsecond would round to no spacing at all.
        let interval = in_micros(quota.period / quota.limit).max(1);
        let mut script = self.check_rate.key(self.key("rate", key));
        script.arg(interval).arg(in_micros(quota.period));
        let retry_after: u64 =
            self.redis.run(&format!("checking rate limit {key}"), &script).await?;
        Ok(match retry_after {
            0 => RateDecision::Allowed,
            micros => RateDecision::Limited { retry_after: Duration::from_micros(micros) },
        })
    }

    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, CoordinationError> {
        // NX with GET sets the key only when it is free and answers what was there, in one step.
        let mut set = redis::cmd("SET");
        set.arg(self.key("claim", key)).arg(value).arg("NX").arg("GET").arg("PX").arg(millis(ttl));
        Ok(self.redis.run(&format!("claiming {key}"), &set).await?)
    }

    async fn update_claim(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), CoordinationError> {
        let mut set = redis::cmd("SET");
        set.arg(self.key("claim", key)).arg(value).arg("PX").arg(millis(ttl));
        Ok(self.redis.run(&format!("updating claim {key}"), &set).await?)
    }

    async fn replace_claim(
        &self,
        key: &str,
        seen: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, CoordinationError> {
        let mut script = self.replace_claim.key(self.key("claim", key));
        script.arg(seen).arg(value).arg(millis(ttl));
        Ok(self.redis.run(&format!("taking over claim {key}"), &script).await?)
    }

    async fn release_claims(&self, keys: &[&str]) -> Result<(), CoordinationError> {
        if keys.is_empty() {
            return Ok(());
        }
        // One command however many: releasing is done in bulk as sends settle.
        let mut del = redis::cmd("DEL");
        for key in keys {
            del.arg(self.key("claim", key));
        }
        Ok(self.redis.run(&format!("releasing {} claims", keys.len()), &del).await?)
    }
}

#[cfg(test)]
mod tests {
    //! Against the shared Redis named by `SWITCHBOARD_REDIS`, each test under a key prefix of
    //! its own; the outage test runs a throwaway `redis-server` of its own.

    use std::fmt::Debug;

    use switchboard_projector::redis_testing::{Namespace, Throwaway, shared_redis, within};

    use super::*;
    use crate::coordination::conformance;

    const LONG: Duration = Duration::from_secs(60);

    fn node(namespace: &Namespace) -> RedisCoordination {
        RedisCoordination::with_config(&namespace.config()).expect("a RedisCoordination")
    }

    /// The conformance functions, each against a fresh namespace that `$namespace` opens.
    macro_rules! conformance_tests {
        ($namespace:expr => $($name:ident;)*) => {$(
            #[tokio::test]
            async fn $name() -> Result<(), CoordinationError> {
                let Some(namespace) = $namespace else { return Ok(()) };
                conformance::$name(&node(&namespace)).await?;
                namespace.remove_keys().await;
                Ok(())
            }
        )*};
    }

    conformance_tests! { Namespace::new() =>
        rate_limits_follow_gcra;
        claims_hold_until_released_or_expired;
    }

    /// The same behaviour on a Redis Cluster of three primaries, where the keys of one call
    /// (claims released together) may be in different slots.
    mod on_a_cluster {
        use super::*;

        conformance_tests! { Namespace::in_cluster() =>
            rate_limits_follow_gcra;
            claims_hold_until_released_or_expired;
        }
    }

    #[tokio::test]
    async fn two_nodes_share_one_rate_limit() -> Result<(), CoordinationError> {
        let Some(namespace) = Namespace::new() else { return Ok(()) };
        let (a, b) = (node(&namespace), node(&namespace));
        let quota = Quota { limit: 6, period: LONG };

        for (i, node) in [&a, &b].into_iter().cycle().take(6).enumerate() {
            let decision = node.check_rate("sender", quota).await?;
            assert_eq!(decision, RateDecision::Allowed, "request {i}");
        }
        for node in [&a, &b] {
            let decision = node.check_rate("sender", quota).await?;
            assert!(
                matches!(decision, RateDecision::Limited { retry_after } if retry_after <= quota.period / quota.limit),
                "the seventh request, on either node: {decision:?}"
            );
        }
        namespace.remove_keys().await;
        Ok(())
    }

    async fn assert_unavailable<T: Debug>(
        call: impl Future<Output = Result<T, CoordinationError>>,
    ) {
        if let Ok(answer) = within(call).await {
            panic!("answered {answer:?} without a reachable Redis");
        }
    }

    #[tokio::test]
    async fn calls_fail_while_redis_is_away_and_work_once_it_is_back()
    -> Result<(), CoordinationError> {
        // Needs redis-server, which comes with the engines.
        if shared_redis().is_none() {
            return Ok(());
        }
        let port = Throwaway::free_port();
        let quota = Quota { limit: 10, period: LONG };
        let coordination = RedisCoordination::connect(&format!("redis://127.0.0.1:{port}"))?;
        assert_unavailable(coordination.check_rate("k", quota)).await;
        assert_unavailable(coordination.claim("k", "v", LONG)).await;

        let server = Throwaway::start(port).await;
        assert_eq!(within(coordination.claim("k", "v", LONG)).await?, None);
        drop(server);
        assert_unavailable(coordination.check_rate("k", quota)).await;
        assert_unavailable(coordination.release_claims(&["k"])).await;

        // A Redis without persistence comes back empty.
        let _server = Throwaway::start(port).await;
        assert_eq!(within(coordination.check_rate("k", quota)).await?, RateDecision::Allowed);
        assert_eq!(within(coordination.claim("k", "v", LONG)).await?, None);
        Ok(())
    }
}
