//! Readers of the embedded log: ordered per partition, fair across partitions, asleep at the tail.
//!
//! A reader only ever reads below the durable frontier the writer publishes after each sync.
//! fjall makes a batch visible as soon as it is committed, a moment before the sync; bounding
//! reads by the frontier is what keeps a reader from handing out a record that a crash could
//! still take back. The same frontier, a `watch` channel, is what a caught-up reader sleeps on.
//! Once the log is closed and a reader has everything, `next_batch` returns
//! [`LogError::Closed`] instead of sleeping forever, so consumers can shut down with the log.

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_schemas::{Position, Topic};
use tokio::sync::watch;

use super::{Frontier, Store, blocking, format};
use crate::log::{Cursor, LogError, LogReader, Record};

pub(super) struct EmbeddedReader {
    store: Arc<Store>,
    frontier: watch::Receiver<Frontier>,
    partitions: Vec<Followed>,
    /// Which partition gets the first share of the next batch; it rotates so that, when a batch
    /// cannot hold everything, no partition is always the one left short.
    turn: usize,
}

struct Followed {
    topic: Topic,
    partition: u32,
    slot: usize,
    next: u64,
}

/// Part of the next batch: `count` records of one followed partition starting at `from`.
#[derive(Clone, Copy)]
struct Take {
    index: usize,
    topic: Topic,
    partition: u32,
    slot: usize,
    from: u64,
    count: u64,
}

impl EmbeddedReader {
    pub(super) fn new(store: Arc<Store>, from: &Cursor) -> EmbeddedReader {
        let partitions = from
            .iter()
            .map(|(topic, partition, next)| Followed {
                topic,
                partition,
                slot: store.slot(topic, partition),
                next,
            })
            .collect();
        EmbeddedReader { frontier: store.frontier.subscribe(), store, partitions, turn: 0 }
    }

    /// Splits up to `max` records among the partitions that have some below the frontier's
    /// ends: each gets an equal share first, then what is left of `max` goes round again to those
    /// with more. A partition whose next record has expired is read from its start.
    fn plan(partitions: &[Followed], turn: usize, frontier: &Frontier, max: usize) -> Vec<Take> {
        let n = partitions.len();
        let order = (0..n).map(|i| (turn + i) % n);
        let mut takes: Vec<Take> = order
            .map(|index| {
                let followed = &partitions[index];
                Take {
                    index,
                    topic: followed.topic,
                    partition: followed.partition,
                    slot: followed.slot,
                    from: followed.next.max(frontier.starts[followed.slot]),
                    count: 0,
                }
            })
            .collect();
        let available = |take: &Take| frontier.ends[take.slot].saturating_sub(take.from);
        let with_records = takes.iter().filter(|take| available(take) > 0).count();
        if with_records == 0 {
            return Vec::new();
        }
        let mut budget = max as u64;
        let share = (budget / with_records as u64).max(1);
        for take in &mut takes {
            take.count = available(take).min(share).min(budget);
            budget -= take.count;
        }
        for take in &mut takes {
            let more = (available(take) - take.count).min(budget);
            take.count += more;
            budget -= more;
        }
        takes.retain(|take| take.count > 0);
        takes
    }
}

/// Reads the planned records; blocking, since fjall may go to disk. `None` when records of the
/// plan expired while it was read: the caller plans again from the new start.
fn read(store: &Store, plan: &[Take]) -> Result<Option<Vec<Record>>, LogError> {
    let mut records = Vec::with_capacity(plan.iter().map(|take| take.count as usize).sum());
    for take in plan {
        match read_take(store, take, &mut records) {
            Err(_) if store.start(take.slot) > take.from => return Ok(None),
            read => read?,
        }
    }
    Ok(Some(records))
}

/// Appends one take's records to `records`.
fn read_take(store: &Store, take: &Take, records: &mut Vec<Record>) -> Result<(), LogError> {
    let range = format::offset_key(take.from)..format::offset_key(take.from + take.count);
    let mut offset = take.from;
    for stored in store.logs[take.slot].range(range) {
        let position = Position { topic: take.topic, partition: take.partition, offset };
        let (key, value) = stored
            .into_inner()
            .map_err(|e| LogError::Storage(format!("reading record {position}: {e}")))?;
        records.push(format::decode(position, &key, &value)?);
        offset += 1;
    }
    if offset != take.from + take.count {
        // Between the start and the durable frontier every offset is present; a hole means
        // damage on disk.
        return Err(LogError::Storage(format!(
            "partition {}.{} is missing records {offset} to {} below its end",
            take.topic,
            take.partition,
            take.from + take.count - 1
        )));
    }
    Ok(())
}

#[async_trait]
impl LogReader for EmbeddedReader {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        let max = max.max(1);
        loop {
            // Marks this frontier as seen before looking at it: a sync published after this point
            // wakes the `changed()` below, so no append can slip by unnoticed.
            let (plan, closed) = {
                let frontier = self.frontier.borrow_and_update();
                (Self::plan(&self.partitions, self.turn, &frontier, max), frontier.closed)
            };
            if !plan.is_empty() {
                let store = Arc::clone(&self.store);
                let taken = plan.clone();
                let Some(records) = blocking(move || read(&store, &taken)).await? else {
                    continue;
                };
                // Only now, after the read succeeded: a batch dropped half way (a cancelled
                // future) leaves the reader where it was, and nothing is skipped.
                for take in &plan {
                    self.partitions[take.index].next = take.from + take.count;
                }
                self.turn = (self.turn + 1) % self.partitions.len();
                return Ok(records);
            }
            if closed {
                return Err(LogError::Closed);
            }
            if self.frontier.changed().await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }
}
