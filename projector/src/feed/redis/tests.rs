//! The Redis feeds against real Redis servers: the conformance suite, two nodes sharing feeds,
//! feeds Redis lost or cannot read, and Redis going away and coming back.
//!
//! Most tests use the shared Redis named by `SWITCHBOARD_REDIS` (`ops/engines/start.sh` runs one
//! at `redis://127.0.0.1:16379`), each under a key prefix of its own that it removes when it
//! passes. The outage test kills and freezes Redis, so it runs a throwaway `redis-server` of its
//! own instead of disturbing the shared one.

use std::fmt::Debug;
use std::time::Duration;

use switchboard_schemas::{Position, Topic, UserId};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

use super::{RedisFeeds, feed_key, head_key};
use crate::feed::{Delivery, FeedError, Feeds, Published, Retention, conformance};
use crate::redis_testing::{Namespace, Throwaway, shared_redis, within};

/// Feeds under the namespace's prefix: one node's handle.
async fn feeds(namespace: &Namespace, retention: Retention) -> RedisFeeds {
    RedisFeeds::with_config(namespace.config(), retention).await.expect("a RedisFeeds")
}

/// The conformance functions, each against a fresh namespace.
macro_rules! conformance_tests {
    ($($name:ident($retention:expr);)*) => {$(
        #[tokio::test]
        async fn $name() -> Result<(), FeedError> {
            let Some(namespace) = Namespace::new() else { return Ok(()) };
            conformance::$name(&feeds(&namespace, $retention).await).await?;
            namespace.remove_keys().await;
            Ok(())
        }
    )*};
}

conformance_tests! {
    entries_are_numbered_per_user(Retention::default());
    appends_skip_what_a_feed_took(Retention::default());
    followers_hear_what_is_published(Retention::default());
    retention_keeps_the_window_and_the_newest(conformance::SHORT);
}

fn delivery(offset: u64, to: &[UserId], text: &str) -> Delivery {
    Delivery {
        source: Position { topic: Topic::Messages, partition: 0, offset },
        recipients: to.to_vec(),
        frame: format!(r#"{{"op":"event","type":"test","data":"{text}""#).into(),
    }
}

/// What a follower hears next, skipping notices of interruptions unless `interruptions`.
async fn next(heard: &mut mpsc::Receiver<Published>, interruptions: bool) -> Published {
    loop {
        let item = timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("something is published within 10 s")
            .expect("the channel stays open");
        if interruptions || item != Published::Interrupted {
            return item;
        }
    }
}

/// The number and text of the next entry heard for `user` in `epoch`.
async fn next_entry(heard: &mut mpsc::Receiver<Published>, user: UserId, epoch: u64) -> u64 {
    match next(heard, false).await {
        Published::Entry { user: heard_user, epoch: heard_epoch, entry } => {
            assert_eq!((heard_user, heard_epoch), (user, epoch), "heard {entry:?}");
            entry.seq
        }
        other => panic!("heard {other:?} instead of an entry"),
    }
}

#[tokio::test]
async fn two_nodes_share_one_numbering() -> Result<(), FeedError> {
    let Some(namespace) = Namespace::new() else { return Ok(()) };
    let (a, b) = (
        feeds(&namespace, Retention::default()).await,
        feeds(&namespace, Retention::default()).await,
    );
    let user = UserId(7);
    let mut heard = b.listen().await?;
    b.follow(user).await?;

    a.append(&[delivery(0, &[user], "m0"), delivery(1, &[user], "m1")]).await?;
    let head = a.head(user).await?;
    assert_eq!(b.head(user).await?, head, "node b sees the feed node a appended to");
    assert_eq!((head.seq, head.first), (2, 1));
    for seq in 1..=2 {
        assert_eq!(next_entry(&mut heard, user, head.epoch).await, seq);
    }

    b.append(&[delivery(1, &[user], "m1"), delivery(2, &[user], "m2")]).await?;
    assert_eq!(next_entry(&mut heard, user, head.epoch).await, 3, "node b skips what a took");
    assert_eq!(a.head(user).await?.seq, 3);
    let texts: Vec<_> = a.read(user, 0, 10).await?.into_iter().map(|e| e.frame).collect();
    assert_eq!(texts.len(), 3);
    assert!(texts[2].ends_with(r#""data":"m2""#));
    namespace.remove_keys().await;
    Ok(())
}

/// Redis appends go feed by feed, so an append that failed part way is made again whole: the
/// feeds that took it skip it and the others take it.
#[tokio::test]
async fn an_append_made_again_reaches_the_feeds_it_missed() -> Result<(), FeedError> {
    let Some(namespace) = Namespace::new() else { return Ok(()) };
    let feeds = feeds(&namespace, Retention::default()).await;
    let (ada, bob) = (UserId(1), UserId(2));
    feeds.append(&[delivery(5, &[ada], "five")]).await?;
    feeds.append(&[delivery(5, &[ada, bob], "five")]).await?;
    assert_eq!(feeds.head(ada).await?.seq, 1, "ada took it once");
    assert_eq!(feeds.head(bob).await?.seq, 1, "bob took it now");
    namespace.remove_keys().await;
    Ok(())
}

#[tokio::test]
async fn a_feed_redis_lost_starts_a_new_epoch() -> Result<(), FeedError> {
    let Some(namespace) = Namespace::new() else { return Ok(()) };
    let feeds = feeds(&namespace, Retention::default()).await;
    let stream = |user| feed_key(&namespace.prefix, user);

    let (user, lost) = conformance::append_some(&feeds).await?;
    namespace.remove_keys().await;
    let fresh = feeds.head(user).await?;
    assert_ne!(fresh.epoch, lost.epoch, "a feed created again has a new epoch");
    assert_eq!((fresh.seq, fresh.first, fresh.at), (0, 1, 0));
    assert!(feeds.read(user, 0, 10).await?.is_empty());

    // Only the entries lost, e.g. evicted: the head's numbers would name nothing.
    feeds.append(&[delivery(0, &[user], "again")]).await?;
    let kept = feeds.head(user).await?;
    assert_eq!((kept.epoch, kept.seq), (fresh.epoch, 1), "the new epoch holds");
    namespace.delete(&[stream(user)]).await;
    let fresh = feeds.head(user).await?;
    assert_ne!(fresh.epoch, kept.epoch, "a feed that lost its entries starts over");
    assert_eq!(fresh.seq, 0);

    // Only the head lost: the entries left belong to no epoch, and numbering starts again at 1.
    feeds.append(&[delivery(0, &[user], "once more")]).await?;
    namespace.delete(&[head_key(&stream(user))]).await;
    feeds.append(&[delivery(0, &[user], "and again")]).await?;
    let head = feeds.head(user).await?;
    assert_ne!(head.epoch, fresh.epoch);
    let entries = feeds.read(user, 0, 10).await?;
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    assert!(entries[0].frame.ends_with(r#""data":"and again""#));

    // Only the entries lost once more, found by the next append rather than by a read of the
    // head: that entry is the first of a new epoch.
    namespace.delete(&[stream(user)]).await;
    feeds.append(&[delivery(1, &[user], "after the loss")]).await?;
    let started_over = feeds.head(user).await?;
    assert_ne!(started_over.epoch, head.epoch);
    assert_eq!(started_over.seq, 1);
    let entries = feeds.read(user, 0, 10).await?;
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
    assert!(entries[0].frame.ends_with(r#""data":"after the loss""#));
    namespace.remove_keys().await;
    Ok(())
}

#[tokio::test]
async fn keys_of_another_type_are_a_storage_error() -> Result<(), FeedError> {
    let Some(namespace) = Namespace::new() else { return Ok(()) };
    let feeds = feeds(&namespace, Retention::default()).await;
    let user = UserId(7);
    let mut redis = namespace.connection().await;
    let () = redis::cmd("SET")
        .arg(head_key(&feed_key(&namespace.prefix, user)))
        .arg("not a hash")
        .query_async(&mut redis)
        .await
        .expect("SET on the shared Redis");

    let appended = feeds.append(&[delivery(0, &[UserId(8), user], "x")]).await;
    let head = feeds.head(user).await;
    for result in [appended, head.map(|_| ())] {
        match result {
            Err(FeedError::Storage(message)) => {
                assert!(!message.contains(&namespace.url), "errors name no URL: {message}");
            }
            other => panic!("{other:?} from a head that is not a hash"),
        }
    }
    namespace.remove_keys().await;
    Ok(())
}

#[tokio::test]
async fn retention_catches_up_in_batches() -> Result<(), FeedError> {
    let Some(namespace) = Namespace::new() else { return Ok(()) };
    let retention = Retention { window: Duration::from_millis(300), min_events: 1 };
    let feeds = feeds(&namespace, retention).await;
    let user = UserId(7);
    let burst: Vec<_> = (0..250).map(|i| delivery(i, &[user], &format!("m{i}"))).collect();
    feeds.append(&burst).await?;
    assert_eq!(feeds.head(user).await?.first, 1);

    sleep(Duration::from_millis(500)).await;
    feeds.append(&[delivery(250, &[user], "m250")]).await?;
    assert_eq!(feeds.head(user).await?.first, 101, "one append removes at most 100");
    feeds.append(&[delivery(251, &[user], "m251")]).await?;
    feeds.append(&[delivery(252, &[user], "m252")]).await?;
    let head = feeds.head(user).await?;
    assert_eq!((head.seq, head.first), (253, 251), "the burst is gone, the new entries stay");
    let kept: Vec<_> = feeds.read(user, 0, 1000).await?.iter().map(|e| e.seq).collect();
    assert_eq!(kept, [251, 252, 253]);
    namespace.remove_keys().await;
    Ok(())
}

async fn assert_unavailable<T: Debug>(call: impl Future<Output = Result<T, FeedError>>) {
    match within(call).await {
        Err(FeedError::Unavailable(_)) => {}
        other => panic!("answered {other:?} without a reachable Redis"),
    }
}

#[tokio::test]
async fn feeds_fail_fast_while_redis_is_away_and_followers_hear_again() -> Result<(), FeedError> {
    // Needs redis-server, which comes with the engines.
    if shared_redis().is_none() {
        return Ok(());
    }
    let port = Throwaway::free_port();
    let user = UserId(7);

    let feeds =
        within(RedisFeeds::connect(&format!("redis://127.0.0.1:{port}"), Retention::default()))
            .await?;
    let mut heard = feeds.listen().await?;
    assert_unavailable(feeds.head(user)).await;
    assert_unavailable(feeds.follow(user)).await;

    let server = Throwaway::start(port).await;
    within(feeds.follow(user)).await?;
    within(feeds.append(&[delivery(0, &[user], "m0")])).await?;
    let epoch = within(feeds.head(user)).await?.epoch;
    assert_eq!(next_entry(&mut heard, user, epoch).await, 1);

    server.signal("STOP");
    assert_unavailable(feeds.head(user)).await;
    assert_unavailable(feeds.append(&[delivery(1, &[user], "m1")])).await;
    server.signal("CONT");
    assert_eq!(next_entry(&mut heard, user, epoch).await, 2, "a frozen server answers later");

    drop(server);
    assert_unavailable(feeds.head(user)).await;
    assert_unavailable(feeds.append(&[delivery(2, &[user], "m2")])).await;
    assert_unavailable(feeds.publish(&[user], "{}")).await;

    // A Redis without persistence comes back empty: the feed starts a new epoch, and the
    // subscription is back without anyone following again.
    let _server = Throwaway::start(port).await;
    assert_eq!(next(&mut heard, true).await, Published::Interrupted, "back: compare heads now");
    within(feeds.append(&[delivery(2, &[user], "m2")])).await?;
    let head = within(feeds.head(user)).await?;
    assert_ne!(head.epoch, epoch);
    assert_eq!(next_entry(&mut heard, user, head.epoch).await, 1);

    // Redis drops the subscription connection alone, as it does a subscriber that falls behind.
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a redis:// URL");
    let mut redis = client.get_multiplexed_async_connection().await.expect("a connection");
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut redis)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);
    assert_eq!(next(&mut heard, true).await, Published::Interrupted);
    within(feeds.append(&[delivery(3, &[user], "m3")])).await?;
    assert_eq!(next_entry(&mut heard, user, head.epoch).await, 2, "resubscribed");
    Ok(())
}

#[tokio::test]
async fn a_redis_cluster_is_refused_with_what_to_use_instead() {
    let url = "redis+cluster://127.0.0.1:16380,127.0.0.1:16381";
    let Err(FeedError::Storage(reason)) = RedisFeeds::connect(url, Retention::default()).await
    else {
        panic!("feeds on a Redis Cluster were accepted");
    };
    assert!(reason.contains("a single Redis") && reason.contains("file://"), "{reason}");
}
