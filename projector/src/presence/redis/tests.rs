//! The Redis backend against real Redis servers: the conformance suite, several nodes sharing
//! one Redis, and Redis going away and coming back.
//!
//! Most tests use the shared Redis named by `SWITCHBOARD_REDIS` (`ops/engines/start.sh` runs one
//! at `redis://127.0.0.1:16379`), each under a key prefix of its own that it removes when it
//! passes. The outage test stops and freezes Redis, so it runs a throwaway `redis-server` of its
//! own instead of disturbing the shared one.

use std::fmt::Debug;
use std::time::Duration;

use switchboard_schemas::UserId;
use tokio::time::sleep;

use super::RedisPresence;
use crate::presence::{Presence, PresenceError, conformance};
use crate::redis_testing::{Certificates, Namespace, Throwaway, shared_redis, within};

const NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";
const LONG: Duration = Duration::from_secs(60);

/// Presence for `node_id` under the namespace's prefix.
async fn node(namespace: &Namespace, node_id: &str) -> RedisPresence {
    RedisPresence::with_config(namespace.config(), node_id).await.expect("a RedisPresence")
}

/// The conformance functions, each against a fresh namespace that `$namespace` opens.
macro_rules! conformance_tests {
    ($namespace:expr => $($name:ident($($node:expr)?);)*) => {$(
        #[tokio::test]
        async fn $name() -> Result<(), PresenceError> {
            let Some(namespace) = $namespace else { return Ok(()) };
            conformance::$name(&node(&namespace, NODE).await $(, $node)?).await?;
            namespace.remove_keys().await;
            Ok(())
        }
    )*};
}

conformance_tests! { Namespace::new() =>
    sessions_come_and_go_on_edges(NODE);
    a_lapsed_lease_takes_its_users_offline(NODE);
}

/// The same behaviour on a Redis Cluster of three primaries.
mod on_a_cluster {
    use super::*;

    conformance_tests! { Namespace::in_cluster() =>
        sessions_come_and_go_on_edges(NODE);
        a_lapsed_lease_takes_its_users_offline(NODE);
    }
}

async fn online(presence: &RedisPresence, user: UserId) -> Result<bool, PresenceError> {
    Ok(presence.status(&[user]).await?[0].online)
}

#[tokio::test]
async fn two_nodes_see_each_others_sessions() -> Result<(), PresenceError> {
    let Some(namespace) = Namespace::new() else { return Ok(()) };
    let (a, b) = (node(&namespace, NODE).await, node(&namespace, OTHER_NODE).await);
    let user = UserId(7);

    assert!(a.open_session(user, "phone", NODE).await?);
    assert!(online(&b, user).await?, "node b sees the session node a opened");
    assert!(!b.open_session(user, "laptop", OTHER_NODE).await?, "already online through node a");
    assert_eq!(a.node_sessions(OTHER_NODE).await?, [(user, "laptop".to_owned())]);

    assert!(!b.close_session(user, "phone").await?, "still online through node b");
    assert!(a.node_sessions(NODE).await?.is_empty(), "a closed session leaves its node's registry");
    assert!(a.close_session(user, "laptop").await?, "the last session, wherever it was opened");
    assert!(!online(&b, user).await?);
    namespace.remove_keys().await;
    Ok(())
}

#[tokio::test]
async fn a_lapsed_node_takes_its_users_offline_for_the_others() -> Result<(), PresenceError> {
    let Some(namespace) = Namespace::new() else { return Ok(()) };
    let (dying, survivor) = (node(&namespace, NODE).await, node(&namespace, OTHER_NODE).await);
    let user = UserId(7);

    dying.renew_lease(NODE, Duration::from_millis(150)).await?;
    assert!(dying.open_session(user, "s", NODE).await?);
    assert!(online(&survivor, user).await?);

    sleep(Duration::from_millis(500)).await;
    assert!(!online(&survivor, user).await?, "offline once node a's lease lapsed");
    assert!(
        survivor.node_sessions(NODE).await?.is_empty(),
        "reading the user forgot the session on the lapsed node"
    );
    namespace.remove_keys().await;
    Ok(())
}

#[tokio::test]
async fn renewals_sweep_lapsed_nodes_away() -> Result<(), PresenceError> {
    let Some(namespace) = Namespace::new() else { return Ok(()) };
    let (dying, survivor) = (node(&namespace, NODE).await, node(&namespace, OTHER_NODE).await);

    dying.renew_lease(NODE, Duration::from_millis(150)).await?;
    for user in 1..=3 {
        assert!(dying.open_session(UserId(user), "s", NODE).await?);
    }
    sleep(Duration::from_millis(500)).await;
    // Nobody asks about these users; the survivor's renewal alone removes them.
    survivor.renew_lease(OTHER_NODE, LONG).await?;
    let tag = format!("{{{}}}", namespace.prefix);
    assert_eq!(
        namespace.keys().await,
        [format!("{tag}lease:{OTHER_NODE}"), format!("{tag}nodes")],
        "nothing of the lapsed node is left"
    );
    namespace.remove_keys().await;
    Ok(())
}

async fn assert_unavailable<T: Debug>(call: impl Future<Output = Result<T, PresenceError>>) {
    if let Ok(answer) = within(call).await {
        panic!("answered {answer:?} without a reachable Redis");
    }
}

#[tokio::test]
async fn presence_degrades_while_redis_is_away_and_recovers_by_itself() -> Result<(), PresenceError>
{
    // Needs redis-server, which comes with the engines.
    if shared_redis().is_none() {
        return Ok(());
    }
    let port = Throwaway::free_port();
    let user = UserId(7);

    let presence =
        within(RedisPresence::connect(&format!("redis://127.0.0.1:{port}"), NODE)).await?;
    assert_unavailable(presence.status(&[user])).await;

    let server = Throwaway::start(port).await;
    assert!(
        within(presence.open_session(user, "s", NODE)).await?,
        "Redis came up after the node: the node takes its lease with its first session"
    );
    assert!(within(online(&presence, user)).await?);

    server.signal("STOP");
    assert_unavailable(presence.status(&[user])).await;
    server.signal("CONT");
    assert!(within(online(&presence, user)).await?, "the frozen server answers again");

    drop(server);
    assert_unavailable(presence.status(&[user])).await;
    assert_unavailable(presence.open_session(user, "s2", NODE)).await;
    assert_unavailable(presence.renew_lease(NODE, LONG)).await;

    // A Redis without persistence comes back empty.
    let _server = Throwaway::start(port).await;
    assert!(within(presence.open_session(user, "s2", NODE)).await?);
    within(presence.renew_lease(NODE, LONG)).await?;
    assert!(within(online(&presence, user)).await?);
    Ok(())
}

/// A Redis that wants TLS and a password is reached through the URL alone: `rediss://`, the
/// password, and the CA that signed the server's certificate. A wrong password or an untrusted
/// certificate leaves presence unavailable, and the error does not repeat the password.
#[tokio::test]
async fn a_redis_behind_tls_and_a_password_is_reached_through_the_url() -> Result<(), PresenceError>
{
    if shared_redis().is_none() {
        return Ok(());
    }
    let dir = tempfile::TempDir::new().expect("temp dir");
    let certificates = Certificates::make(dir.path());
    let port = Throwaway::free_port().to_string();
    let _server = Throwaway::start_with(
        port.parse().expect("a port"),
        &[
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &certificates.server_certificate,
            "--tls-key-file",
            &certificates.server_key,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret-pass",
        ],
    )
    .await;
    let url = |password: &str, ca: Option<&str>| {
        let ca = ca.map(|ca| format!("?ca={ca}")).unwrap_or_default();
        format!("rediss://:{password}@127.0.0.1:{port}{ca}")
    };
    let user = UserId(7);

    let presence =
        RedisPresence::connect(&url("s3cret-pass", Some(&certificates.ca)), NODE).await?;
    assert!(within(presence.open_session(user, "s", NODE)).await?, "the user came online");
    assert!(within(online(&presence, user)).await?);

    let wrong = RedisPresence::connect(&url("guessed", Some(&certificates.ca)), NODE).await?;
    let refused = within(wrong.status(&[user])).await.expect_err("a wrong password is refused");
    assert!(!refused.to_string().contains("guessed"), "{refused}");

    let untrusting = RedisPresence::connect(&url("s3cret-pass", None), NODE).await?;
    assert_unavailable(untrusting.status(&[user])).await;
    Ok(())
}
