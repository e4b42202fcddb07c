//! How far the projector has got, for queries that must see a write first.
//!
//! Only the [`PROJECTED_TOPICS`] are folded into read models. A position in any other topic
//! (signals, relayed and forgotten) has nothing to wait for: every wait here counts it as
//! reached at once, so that no caller can wait for a projection that will never happen.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use switchboard_ingest::log::Cursor;
use switchboard_schemas::{Position, Topic};
use tokio::sync::watch;

use crate::PROJECTED_TOPICS;

/// A shared, watchable checkpoint. The projector advances it after each applied batch; readers
/// wait on it with a consistency token.
#[derive(Clone)]
pub struct Progress {
    cursor: Arc<watch::Sender<Cursor>>,
}

/// The projection did not reach the position in time.
#[derive(Debug, thiserror::Error)]
#[error("the read models have not caught up with {0} yet")]
pub struct NotCaughtUp(pub Position);

/// A partition the read models have not applied as far as a target names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behind {
    pub topic: Topic,
    pub partition: u32,
    /// The next offset the read models will apply.
    pub applied: u64,
    /// The next offset the target names.
    pub target: u64,
}

impl fmt::Display for Behind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} at {} of {}", self.topic, self.partition, self.applied, self.target)
    }
}

fn is_projected(topic: Topic) -> bool {
    PROJECTED_TOPICS.contains(&topic)
}

/// The partitions of `target` that `applied` has not reached.
fn behind(applied: &Cursor, target: &Cursor) -> Vec<Behind> {
    target
        .iter()
        .filter(|(topic, ..)| is_projected(*topic))
        .filter_map(|(topic, partition, target)| {
            let applied = applied.get(topic, partition).unwrap_or(0);
            (applied < target).then_some(Behind { topic, partition, applied, target })
        })
        .collect()
}

fn has_passed(applied: &Cursor, position: Position) -> bool {
    !is_projected(position.topic) || applied.has_passed(position)
}

impl Progress {
    pub fn new(initial: Cursor) -> Progress {
        Progress { cursor: Arc::new(watch::Sender::new(initial)) }
    }

    /// Moves forward to `cursor` wherever it is ahead; never moves back, so several sources
    /// (a local projector, a poll of the store) can feed one `Progress`.
    pub fn advance(&self, cursor: Cursor) {
        self.cursor.send_if_modified(|current| {
            let next = current.clone().furthest(&cursor);
            let moved = next != *current;
            *current = next;
            moved
        });
    }

    pub fn current(&self) -> Cursor {
        self.cursor.borrow().clone()
    }

    /// Whether `cursor` has read every partition of `topic` at least as far as the projection
    /// has applied it.
    pub fn is_covered_by(&self, cursor: &Cursor, topic: Topic) -> bool {
        self.cursor
            .borrow()
            .iter()
            .filter(|(t, ..)| *t == topic)
            .all(|(topic, partition, next)| cursor.get(topic, partition).unwrap_or(0) >= next)
    }

    /// The partitions of `target` the read models have yet to reach; empty once they have.
    pub fn behind(&self, target: &Cursor) -> Vec<Behind> {
        behind(&self.cursor.borrow(), target)
    }

    /// Waits, however long it takes, until every partition of `target` has been applied up to
    /// the offset `target` names.
    pub async fn wait_for_cursor(&self, target: &Cursor) {
        let mut rx = self.cursor.subscribe();
        // The sender lives as long as `self`, so the wait ends only by catching up.
        let _ = rx.wait_for(|applied| behind(applied, target).is_empty()).await;
    }

    /// Waits until the event at `position` has been applied, for at most `timeout`.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), NotCaughtUp> {
        let mut rx = self.cursor.subscribe();
        let reached = rx.wait_for(|applied| has_passed(applied, position));
        match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NotCaughtUp(position)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_topic_nothing_projects_is_never_waited_for() {
        let progress = Progress::new("messages.0=3".parse().unwrap());
        let target: Cursor = "messages.0=3,signals.0=7,signals.1=2".parse().unwrap();
        assert_eq!(progress.behind(&target), []);
        progress.wait_for_cursor(&target).await;
        let signal = Position { topic: Topic::Signals, partition: 0, offset: 6 };
        progress.wait_for(signal, Duration::ZERO).await.expect("nothing to wait for");
    }

    #[tokio::test]
    async fn waits_name_the_partitions_still_behind() {
        let progress = Progress::new("messages.0=3,calls.1=1".parse().unwrap());
        let target: Cursor = "messages.0=3,calls.1=4,presence.2=1".parse().unwrap();
        let behind: Vec<String> =
            progress.behind(&target).iter().map(ToString::to_string).collect();
        assert_eq!(behind, ["presence.2 at 0 of 1", "calls.1 at 1 of 4"]);
        let message = Position { topic: Topic::Messages, partition: 0, offset: 3 };
        let not_yet = progress.wait_for(message, Duration::ZERO).await;
        assert!(not_yet.is_err(), "messages.0 is applied up to offset 2 only");

        progress.advance("calls.1=4,presence.2=1".parse().unwrap());
        progress.wait_for_cursor(&target).await;
    }
}
