//! How far the projector has got, for queries that must see a write first.

use std::sync::Arc;
use std::time::Duration;

use switchboard_ingest::log::Cursor;
use switchboard_schemas::{Position, Topic};
use tokio::sync::watch;

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

    pub fn has_reached(&self, position: Position) -> bool {
        self.cursor.borrow().has_passed(position)
    }

    /// Waits, however long it takes, until every partition of `target` has been applied up to
    /// the offset `target` names.
    pub async fn wait_for_cursor(&self, target: &Cursor) {
        let mut rx = self.cursor.subscribe();
        let caught_up = |cursor: &Cursor| {
            target
                .iter()
                .all(|(topic, partition, next)| cursor.get(topic, partition).unwrap_or(0) >= next)
        };
        // The sender lives as long as `self`, so the wait ends only by catching up.
        let _ = rx.wait_for(caught_up).await;
    }

    /// Waits until the event at `position` has been applied, for at most `timeout`.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), NotCaughtUp> {
        let mut rx = self.cursor.subscribe();
        let reached = rx.wait_for(|cursor| cursor.has_passed(position));
        match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NotCaughtUp(position)),
        }
    }
}
