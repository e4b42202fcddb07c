//! The behaviour every [`Coordination`] backend must show, written once against the trait.
//!
//! Keys are fresh on every call (unique across runs too), so the functions may share one
//! backend, a long-lived Redis included. Where expiry is the point, they use short periods and
//! real sleeps with generous margins, and assert only on what the backend answers, never on how
//! long anything took. A function returns `Err` when the backend fails and panics when it
//! answers wrongly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::sleep;

use super::{Coordination, CoordinationError, Quota, RateDecision};

/// A claim long enough to outlast any of these functions.
const LONG: Duration = Duration::from_secs(60);

fn key(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("conformance:{what}:{started}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A key gets `limit` requests at once, is then limited with a retry time of at most one
/// emission interval, and is allowed again once that has passed. Keys do not share a budget.
pub async fn rate_limits_follow_gcra(
    coordination: &dyn Coordination,
) -> Result<(), CoordinationError> {
    // An emission interval of 200 ms: far longer than the few calls below take back to back.
    let quota = Quota { limit: 4, period: Duration::from_millis(800) };
    let interval = quota.period / quota.limit;
    let (k, other) = (key("rate"), key("rate"));

    for i in 0..quota.limit {
        assert_eq!(coordination.check_rate(&k, quota).await?, RateDecision::Allowed, "request {i}");
    }
    let RateDecision::Limited { retry_after } = coordination.check_rate(&k, quota).await? else {
        panic!("request {} of a burst of {} was allowed", quota.limit + 1, quota.limit);
    };
    assert!(retry_after > Duration::ZERO, "a limited request must wait");
    assert!(retry_after <= interval, "{retry_after:?} is longer than one interval ({interval:?})");
    assert!(
        matches!(coordination.check_rate(&k, quota).await?, RateDecision::Limited { .. }),
        "a limited request does not earn the next one a slot"
    );
    assert_eq!(coordination.check_rate(&other, quota).await?, RateDecision::Allowed);

    sleep(retry_after + Duration::from_millis(50)).await;
    assert_eq!(coordination.check_rate(&k, quota).await?, RateDecision::Allowed, "after waiting");
    Ok(())
}

/// A claim returns the value already there until it is released or expires, and is replaced only
/// by a caller that saw its current value.
pub async fn claims_hold_until_released_or_expired(
    coordination: &dyn Coordination,
) -> Result<(), CoordinationError> {
    let k = key("claim");
    assert_eq!(coordination.claim(&k, "first", LONG).await?, None, "a free key is claimed");
    assert_eq!(coordination.claim(&k, "second", LONG).await?, Some("first".to_owned()));

    coordination.update_claim(&k, "done", LONG).await?;
    assert_eq!(coordination.claim(&k, "third", LONG).await?, Some("done".to_owned()));

    assert!(!coordination.replace_claim(&k, "first", "mine", LONG).await?, "not what is there now");
    assert!(coordination.replace_claim(&k, "done", "mine", LONG).await?, "what the caller saw");
    assert!(!coordination.replace_claim(&k, "done", "yours", LONG).await?, "taken over once only");
    assert_eq!(coordination.claim(&k, "third", LONG).await?, Some("mine".to_owned()));
    assert!(!coordination.replace_claim(&key("never-claimed"), "", "mine", LONG).await?);

    coordination.release_claims(&[&k]).await?;
    assert_eq!(coordination.claim(&k, "fourth", LONG).await?, None, "released keys are free");
    assert_eq!(coordination.claim(&k, "fifth", LONG).await?, Some("fourth".to_owned()));
    coordination.release_claims(&[&key("never-claimed")]).await?;
    coordination.release_claims(&[]).await?;

    let (a, b, kept) = (key("claim"), key("claim"), key("claim"));
    for claimed in [&a, &b, &kept] {
        assert_eq!(coordination.claim(claimed, "held", LONG).await?, None);
    }
    coordination.release_claims(&[&a, &b]).await?;
    assert_eq!(coordination.claim(&a, "again", LONG).await?, None, "every key released at once");
    assert_eq!(coordination.claim(&b, "again", LONG).await?, None, "every key released at once");
    assert_eq!(coordination.claim(&kept, "again", LONG).await?, Some("held".to_owned()));

    let short = key("claim");
    assert_eq!(coordination.claim(&short, "brief", Duration::from_millis(100)).await?, None);
    sleep(Duration::from_millis(400)).await;
    assert_eq!(coordination.claim(&short, "later", LONG).await?, None, "expired claims are free");
    assert_eq!(coordination.claim(&short, "again", LONG).await?, Some("later".to_owned()));
    Ok(())
}
