//! The behaviour every [`Feeds`] backend must show, written once against the trait.
//!
//! Users are fresh on every call (unique across runs too), so the functions may share one
//! backend, a long-lived Redis included. A function returns `Err` when the backend fails and
//! panics when it answers wrongly.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_schemas::{Position, Topic, UserId};
use tokio::sync::mpsc;

use super::{Delivery, FeedError, Feeds, Head, Published, Retention};

static NEXT: LazyLock<AtomicI64> = LazyLock::new(|| {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
    AtomicI64::new(i64::try_from(micros).unwrap_or(i64::MAX / 2))
});

fn user() -> UserId {
    UserId(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The retention [`retention_keeps_the_window_and_the_newest`] needs its backend opened with.
pub const SHORT: Retention = Retention { window: Duration::from_secs(1), min_events: 3 };

fn delivery(topic: Topic, partition: u32, offset: u64, to: &[UserId], text: &str) -> Delivery {
    Delivery {
        source: Position { topic, partition, offset },
        recipients: to.to_vec(),
        frame: format!(r#"{{"op":"event","type":"test","data":"{text}""#).into(),
    }
}

fn text_of(frame: &str) -> &str {
    let start = frame.find(r#""data":""#).expect("a test frame") + 8;
    &frame[start..frame.len() - 1]
}

async fn texts(feeds: &dyn Feeds, user: UserId, after: u64) -> Result<Vec<String>, FeedError> {
    let entries = feeds.read(user, after, 1000).await?;
    Ok(entries.iter().map(|e| text_of(&e.frame).to_owned()).collect())
}

/// Appends a few entries to a fresh user's feed; returns the user and the head after them.
pub async fn append_some(feeds: &dyn Feeds) -> Result<(UserId, Head), FeedError> {
    let u = user();
    let deliveries: Vec<_> =
        (0..3).map(|i| delivery(Topic::Messages, 0, i, &[u], &format!("m{i}"))).collect();
    feeds.append(&deliveries).await?;
    Ok((u, feeds.head(u).await?))
}

/// Each user's entries are numbered from 1 in the order they were appended, and read back in
/// that order from any number.
pub async fn entries_are_numbered_per_user(feeds: &dyn Feeds) -> Result<(), FeedError> {
    let (ada, bob) = (user(), user());
    let empty = feeds.head(ada).await?;
    assert_eq!((empty.seq, empty.first), (0, 1), "a new feed is empty");
    assert_eq!(feeds.head(ada).await?.epoch, empty.epoch, "the epoch stays");

    feeds
        .append(&[
            delivery(Topic::Messages, 0, 0, &[ada, bob], "both"),
            delivery(Topic::Calls, 1, 0, &[ada], "ada only"),
        ])
        .await?;
    feeds.append(&[delivery(Topic::Messages, 2, 7, &[bob, ada], "later")]).await?;

    let head = feeds.head(ada).await?;
    assert_eq!((head.epoch, head.seq, head.first), (empty.epoch, 3, 1));
    assert!(head.at > 0);
    assert_eq!(feeds.head(bob).await?.seq, 2);
    assert_eq!(texts(feeds, ada, 0).await?, ["both", "ada only", "later"]);
    assert_eq!(texts(feeds, ada, 1).await?, ["ada only", "later"]);
    assert_eq!(texts(feeds, bob, 0).await?, ["both", "later"]);
    let entries = feeds.read(ada, 0, 2).await?;
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2], "limited, in order");
    assert!(feeds.read(ada, 3, 10).await?.is_empty(), "nothing after the head");
    Ok(())
}

/// A feed takes each offset of a source partition once: appending again what it took, or
/// anything older from the same partition, adds nothing.
pub async fn appends_skip_what_a_feed_took(feeds: &dyn Feeds) -> Result<(), FeedError> {
    let (ada, bob) = (user(), user());
    feeds.append(&[delivery(Topic::Messages, 0, 5, &[ada, bob], "five")]).await?;
    feeds
        .append(&[
            delivery(Topic::Messages, 0, 5, &[ada, bob], "five"),
            delivery(Topic::Messages, 0, 3, &[ada], "three"),
            delivery(Topic::Messages, 0, 6, &[ada], "six"),
            delivery(Topic::Messages, 1, 0, &[bob], "other partition"),
        ])
        .await?;
    assert_eq!(texts(feeds, ada, 0).await?, ["five", "six"]);
    assert_eq!(texts(feeds, bob, 0).await?, ["five", "other partition"]);
    Ok(())
}

/// Skips the backend's notices that it may have dropped something: these functions do not break
/// its connection.
async fn next(heard: &mut mpsc::Receiver<Published>) -> Published {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("something is published within 10 s")
            .expect("the channel stays open");
        if item != Published::Interrupted {
            return item;
        }
    }
}

/// A follower hears the entries appended for the users it follows, numbered, and the frames
/// published to them, and nothing for anyone else.
pub async fn followers_hear_what_is_published(feeds: &dyn Feeds) -> Result<(), FeedError> {
    let mut heard = feeds.listen().await?;
    assert!(feeds.listen().await.is_err(), "one listener per handle");
    let (ada, bob) = (user(), user());
    let epoch = feeds.head(ada).await?.epoch;
    feeds.follow(ada).await?;

    feeds.append(&[delivery(Topic::Messages, 0, 0, &[bob, ada], "hello")]).await?;
    let Published::Entry { user, epoch: heard_epoch, entry } = next(&mut heard).await else {
        panic!("an entry")
    };
    assert_eq!((user, heard_epoch, entry.seq, text_of(&entry.frame)), (ada, epoch, 1, "hello"));

    feeds.publish(&[bob, ada], r#"{"op":"event","type":"typing"}"#).await?;
    let passing =
        Published::Passing { user: ada, frame: r#"{"op":"event","type":"typing"}"#.into() };
    assert_eq!(next(&mut heard).await, passing);

    feeds.unfollow(ada).await?;
    feeds.follow(bob).await?;
    feeds.append(&[delivery(Topic::Messages, 0, 1, &[ada, bob], "after")]).await?;
    let Published::Entry { user, entry, .. } = next(&mut heard).await else { panic!("an entry") };
    assert_eq!((user, entry.seq, text_of(&entry.frame)), (bob, 2, "after"), "ada unfollowed");
    Ok(())
}

/// Entries younger than the window are kept however many there are; older ones only while they
/// are among the newest `min_events`. Needs a backend opened with [`SHORT`].
pub async fn retention_keeps_the_window_and_the_newest(feeds: &dyn Feeds) -> Result<(), FeedError> {
    let ada = user();
    let burst: Vec<_> =
        (0..10).map(|i| delivery(Topic::Messages, 0, i, &[ada], &format!("m{i}"))).collect();
    feeds.append(&burst).await?;
    assert_eq!(feeds.head(ada).await?.first, 1, "all ten are in the window");
    assert_eq!(texts(feeds, ada, 0).await?.len(), 10);

    tokio::time::sleep(SHORT.window + Duration::from_millis(500)).await;
    feeds.append(&[delivery(Topic::Messages, 0, 10, &[ada], "m10")]).await?;
    let head = feeds.head(ada).await?;
    assert_eq!((head.seq, head.first), (11, 9), "the newest three are kept");
    assert_eq!(texts(feeds, ada, 0).await?, ["m8", "m9", "m10"]);
    Ok(())
}
