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

use super::{Presence, PresenceError};

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
