//! The writer thread: the one place records are written and offsets assigned.
//!
//! An fsync costs milliseconds on most disks, and an append must not be acknowledged before it,
//! so syncing once per append caps a log at a few hundred appends per second. Instead every
//! request goes through a channel to this thread, which takes everything pending (up to
//! [`MAX_BATCH`]), writes it as one atomic fjall batch, syncs once, publishes the new durable
//! frontier to readers, and only then answers each waiting appender. Under load, many appends
//! share one sync; alone, an append pays one sync, as it must.
//!
//! A plain thread rather than a task, because fjall (and fsync) block.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use fjall::{OwnedWriteBatch, PersistMode};
use switchboard_schemas::{Position, Topic};
use tokio::sync::{mpsc, oneshot};

use super::{Store, format};
use crate::log::LogError;

/// The most requests written under one sync. Bounds the batch's memory and how long the first
/// request in it waits for the last one to be encoded.
const MAX_BATCH: usize = 4096;

pub(super) enum Request {
    Append {
        topic: Topic,
        partition: u32,
        /// [`Store::slot`] of the topic-partition.
        slot: usize,
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<Position, LogError>>,
    },
    /// Stores a consumer group's cursor (text form) in the same batch and sync as the appends.
    Commit { group: String, cursor: String, reply: oneshot::Sender<Result<(), LogError>> },
    /// Removes a partition's records from its start up to (not including) `before`, which
    /// becomes its start: they have expired.
    Expire {
        topic: Topic,
        partition: u32,
        /// [`Store::slot`] of the topic-partition.
        slot: usize,
        before: u64,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// Starts the writer. `latest_timestamp_ms` is the timestamp of the newest stored record: the
/// writer's timestamps never go below it.
pub(super) fn spawn(
    store: Arc<Store>,
    requests: mpsc::UnboundedReceiver<Request>,
    latest_timestamp_ms: i64,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("embedded-log-writer".into())
        .spawn(move || run(&store, requests, latest_timestamp_ms))
}

fn run(store: &Store, mut requests: mpsc::UnboundedReceiver<Request>, latest_timestamp_ms: i64) {
    let _closed = MarkClosedOnExit(store);
    let mut clock = LogClock { latest_ms: latest_timestamp_ms };
    let mut next = store.frontier.borrow().ends.clone();
    let mut pending = Vec::with_capacity(MAX_BATCH);
    // Returns 0 only once every sender is gone and the queue is empty: close() or the last
    // handle dropped, with everything queued before that still written.
    while requests.blocking_recv_many(&mut pending, MAX_BATCH) > 0 {
        write(store, &mut next, clock.now_ms(), pending.drain(..));
    }
}

/// Tells `close()` and readers that no record will follow, even if the thread unwinds, so that
/// nobody waits forever on a writer that is gone.
struct MarkClosedOnExit<'a>(&'a Store);

impl Drop for MarkClosedOnExit<'_> {
    fn drop(&mut self) {
        self.0.frontier.send_modify(|frontier| frontier.closed = true);
    }
}

/// A request written to the batch, waiting for the sync before it is answered.
enum Waiting {
    Append(oneshot::Sender<Result<Position, LogError>>, Position),
    Done(oneshot::Sender<Result<(), LogError>>),
}

/// Writes one group of requests under a single sync. `next` holds each partition's next offset
/// and moves only once the batch is durable.
fn write(
    store: &Store,
    next: &mut Vec<u64>,
    timestamp_ms: i64,
    requests: impl ExactSizeIterator<Item = Request>,
) {
    // One item per request: sized up front rather than grown (and copied) by doubling.
    let mut batch = OwnedWriteBatch::with_capacity(store.db.clone(), requests.len());
    let mut ends = next.clone();
    let mut waiting = Vec::with_capacity(requests.len());
    // Partitions whose start moves in this batch, to where.
    let mut starts = BTreeMap::new();
    for request in requests {
        match request {
            Request::Append { topic, partition, slot, key, value, reply } => {
                match format::encode_value(timestamp_ms, &key, &value) {
                    Ok(stored) => {
                        let offset = ends[slot];
                        ends[slot] += 1;
                        batch.insert(&store.logs[slot], format::offset_key(offset), stored);
                        waiting.push(Waiting::Append(reply, Position { topic, partition, offset }));
                    }
                    // Only this append is malformed; the rest of the batch goes ahead. A send
                    // error means the appender stopped waiting, which needs no answer.
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Request::Commit { group, cursor, reply } => {
                batch.insert(&store.consumers, group, cursor);
                waiting.push(Waiting::Done(reply));
            }
            Request::Expire { topic, partition, slot, before, reply } => {
                let before = before.min(ends[slot]);
                let start = starts.get(&slot).copied().unwrap_or_else(|| store.start(slot));
                if before > start {
                    for offset in start..before {
                        batch.remove(&store.logs[slot], format::offset_key(offset));
                    }
                    batch.insert(
                        &store.meta,
                        format::start_key(topic, partition),
                        format::offset_key(before),
                    );
                    starts.insert(slot, before);
                }
                waiting.push(Waiting::Done(reply));
            }
        }
    }
    if waiting.is_empty() {
        return;
    }
    if !starts.is_empty() {
        // Before the records go: a reader that then misses them sees that they expired.
        store.frontier.send_modify(|frontier| {
            for (&slot, &start) in &starts {
                frontier.starts[slot] = start;
            }
        });
    }

    match batch.commit().and_then(|()| store.db.persist(PersistMode::SyncAll)) {
        Ok(()) => {
            if ends != *next {
                *next = ends;
                // Readers first: whoever gets an acknowledgement below may read its record at
                // once (read-your-writes through the consistency token).
                store.frontier.send_modify(|frontier| frontier.ends.clone_from(next));
            }
            // Appenders that stopped waiting (a dropped future) are not told; their records are
            // stored all the same, as with a producer that times out.
            for waiting in waiting {
                match waiting {
                    Waiting::Append(reply, position) => drop(reply.send(Ok(position))),
                    Waiting::Done(reply) => drop(reply.send(Ok(()))),
                }
            }
        }
        Err(e) => {
            // The frontier stays where it was, so readers never see this batch even if it reached
            // the memtable. fjall refuses all further writes after a failed sync (it cannot know
            // what reached the disk), so the offsets handed out here are never reused.
            let message = format!("writing a batch of {} to the log: {e}", waiting.len());
            tracing::error!("{message}");
            for waiting in waiting {
                let error = LogError::Storage(message.clone());
                match waiting {
                    Waiting::Append(reply, _) => drop(reply.send(Err(error))),
                    Waiting::Done(reply) => drop(reply.send(Err(error))),
                }
            }
        }
    }
}

/// The time records are stamped with: the system clock, except that it never goes backwards, so
/// that a time names one place in each partition ([`crate::log::Log::offsets_at`]) even when the
/// clock is stepped back.
struct LogClock {
    latest_ms: i64,
}

impl LogClock {
    fn now_ms(&mut self) -> i64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
        self.latest_ms = self.latest_ms.max(system);
        self.latest_ms
    }
}

#[cfg(test)]
mod tests {
    use super::LogClock;

    #[test]
    fn the_clock_never_goes_back_below_the_newest_record() {
        let ahead = i64::MAX - 1;
        let mut clock = LogClock { latest_ms: ahead };
        assert_eq!(clock.now_ms(), ahead, "a stored record from later than the system clock");
        let mut clock = LogClock { latest_ms: i64::MIN };
        let first = clock.now_ms();
        assert!(first > 1_700_000_000_000 && clock.now_ms() >= first);
    }
}
