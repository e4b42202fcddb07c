//! The behaviour every [`Presence`] backend must show, written once against the trait.
//!
//! Each backend's tests call these functions. Users, keys and node ids are fresh on every call
//! (unique across runs too), so the functions may share one backend, a long-lived Redis included.
//! Where expiry is the point, the functions use short periods and real sleeps with generous
//! margins, and assert only on what the backend answers, never on how long anything took.
//!
//! A function returns `Err` when the backend fails and panics when it answers wrongly.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_schemas::UserId;
use tokio::time::sleep;

use super::{Presence, PresenceError, Quota, RateDecision};

static NEXT: LazyLock<AtomicI64> = LazyLock::new(|| {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    AtomicI64::new(i64::try_from(micros).unwrap_or(i64::MAX / 2))
});

fn fresh() -> i64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn user() -> UserId {
    UserId(fresh())
}

fn key(what: &str) -> String {
    format!("conformance:{what}:{}", fresh())
}

/// A lease long enough to outlast any of these functions.
const LONG: Duration = Duration::from_secs(60);

async fn online(presence: &dyn Presence, user: UserId) -> Result<bool, PresenceError> {
    let status = presence.status(&[user]).await?;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].user_id, user);
    Ok(status[0].online)
}

/// A user with several devices comes online with the first session and goes offline with the
/// last; only those two calls report an edge.
pub async fn sessions_come_and_go_on_edges(
    presence: &dyn Presence,
    node_id: &str,
) -> Result<(), PresenceError> {
    presence.renew_lease(node_id, LONG).await?;
    let (u, bystander) = (user(), user());

    assert!(!online(presence, u).await?);
    assert!(presence.open_session(u, "phone", node_id).await?, "first session: came online");
    assert!(!presence.open_session(u, "laptop", node_id).await?, "second session: no edge");
    assert!(online(presence, u).await?);

    assert!(!presence.close_session(u, "phone").await?, "one device left: still online");
    assert!(online(presence, u).await?);
    assert!(presence.close_session(u, "laptop").await?, "last session: went offline");
    assert!(!online(presence, u).await?);
    assert!(!presence.close_session(u, "laptop").await?, "closing twice is no second edge");
    assert!(!presence.close_session(u, "never-opened").await?);

    assert!(presence.open_session(u, "tablet", node_id).await?, "back online");
    let status = presence.status(&[bystander, u]).await?;
    let answer: Vec<(UserId, bool)> = status.iter().map(|s| (s.user_id, s.online)).collect();
    assert_eq!(answer, [(bystander, false), (u, true)], "one answer per user, in order");
    assert!(presence.close_session(u, "tablet").await?);
    Ok(())
}

/// A key gets `limit` requests at once, is then limited with a retry time of at most one
/// emission interval, and is allowed again once that has passed. Keys do not share a budget.
pub async fn rate_limits_follow_gcra(presence: &dyn Presence) -> Result<(), PresenceError> {
    // An emission interval of 200 ms: far longer than the few calls below take back to back.
    let quota = Quota { limit: 4, period: Duration::from_millis(800) };
    let interval = quota.period / quota.limit;
    let (k, other) = (key("rate"), key("rate"));

    for i in 0..quota.limit {
        assert_eq!(presence.check_rate(&k, quota).await?, RateDecision::Allowed, "request {i}");
    }
    let RateDecision::Limited { retry_after } = presence.check_rate(&k, quota).await? else {
        panic!("request {} of a burst of {} was allowed", quota.limit + 1, quota.limit);
    };
    assert!(retry_after > Duration::ZERO, "a limited request must wait");
    assert!(retry_after <= interval, "{retry_after:?} is longer than one interval ({interval:?})");
    assert!(
        matches!(presence.check_rate(&k, quota).await?, RateDecision::Limited { .. }),
        "a limited request does not earn the next one a slot"
    );
    assert_eq!(presence.check_rate(&other, quota).await?, RateDecision::Allowed);

    sleep(retry_after + Duration::from_millis(50)).await;
    assert_eq!(presence.check_rate(&k, quota).await?, RateDecision::Allowed, "after waiting");
    Ok(())
}

/// A claim returns the value already there until it is released or expires, and is replaced only
/// by a caller that saw its current value.
pub async fn claims_hold_until_released_or_expired(
    presence: &dyn Presence,
) -> Result<(), PresenceError> {
    let k = key("claim");
    assert_eq!(presence.claim(&k, "first", LONG).await?, None, "a free key is claimed");
    assert_eq!(presence.claim(&k, "second", LONG).await?, Some("first".to_owned()));

    presence.update_claim(&k, "done", LONG).await?;
    assert_eq!(presence.claim(&k, "third", LONG).await?, Some("done".to_owned()));

    assert!(!presence.replace_claim(&k, "first", "mine", LONG).await?, "not what is there now");
    assert!(presence.replace_claim(&k, "done", "mine", LONG).await?, "what the caller saw");
    assert!(!presence.replace_claim(&k, "done", "yours", LONG).await?, "taken over once only");
    assert_eq!(presence.claim(&k, "third", LONG).await?, Some("mine".to_owned()));
    assert!(!presence.replace_claim(&key("never-claimed"), "", "mine", LONG).await?);

    presence.release_claims(&[&k]).await?;
    assert_eq!(presence.claim(&k, "fourth", LONG).await?, None, "released keys are free");
    assert_eq!(presence.claim(&k, "fifth", LONG).await?, Some("fourth".to_owned()));
    presence.release_claims(&[&key("never-claimed")]).await?;
    presence.release_claims(&[]).await?;

    let (a, b, kept) = (key("claim"), key("claim"), key("claim"));
    for claimed in [&a, &b, &kept] {
        assert_eq!(presence.claim(claimed, "held", LONG).await?, None);
    }
    presence.release_claims(&[&a, &b]).await?;
    assert_eq!(presence.claim(&a, "again", LONG).await?, None, "every key released at once");
    assert_eq!(presence.claim(&b, "again", LONG).await?, None, "every key released at once");
    assert_eq!(presence.claim(&kept, "again", LONG).await?, Some("held".to_owned()));

    let short = key("claim");
    assert_eq!(presence.claim(&short, "brief", Duration::from_millis(100)).await?, None);
    sleep(Duration::from_millis(400)).await;
    assert_eq!(presence.claim(&short, "later", LONG).await?, None, "expired claims are free");
    assert_eq!(presence.claim(&short, "again", LONG).await?, Some("later".to_owned()));
    Ok(())
}

/// When a node stops renewing its lease, the users it held go offline, unless they also have a
/// session on a node that is still live.
pub async fn a_lapsed_lease_takes_its_users_offline(
    presence: &dyn Presence,
    live_node: &str,
) -> Result<(), PresenceError> {
    let dead_node = key("node");
    presence.renew_lease(live_node, LONG).await?;
    presence.renew_lease(&dead_node, Duration::from_millis(150)).await?;
    let (only_there, also_here) = (user(), user());

    assert!(presence.open_session(only_there, "s", &dead_node).await?);
    assert!(presence.open_session(also_here, "s1", &dead_node).await?);
    assert!(!presence.open_session(also_here, "s2", live_node).await?);
    assert!(online(presence, only_there).await?, "online while the lease lasts");

    sleep(Duration::from_millis(500)).await;
    assert!(!online(presence, only_there).await?, "offline once the lease lapsed");
    assert!(online(presence, also_here).await?, "still online through the live node");
    assert!(!presence.close_session(only_there, "s").await?, "was already offline");
    assert!(presence.close_session(also_here, "s2").await?, "its last live session closed");
    Ok(())
}
