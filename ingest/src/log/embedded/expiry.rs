//! Retention on the embedded log: the records a topic no longer keeps are removed.
//!
//! Every [`EXPIRE_EVERY`], each partition of an expiring topic is searched for the first record
//! still within its retention ([`Store::first_taken_at`]), and the writer removes everything
//! before it, moving the partition's start ([`Request::Expire`]). The removal goes through the
//! writer so that it shares the writer's batches and syncs, and so that a partition's start and
//! end only ever move in one thread. Offsets are not reused: a partition whose records have all
//! expired still ends where it did.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchboard_schemas::Topic;

use super::writer::Request;
use super::{Store, WriterHandle, blocking};
use crate::log::LogError;
use crate::log::retention::Retention;

/// How often expired records are looked for. Retention is counted in hours and days; a minute
/// late is nothing.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The most records one writer batch removes, so that appends queued behind a large first
/// expiry wait for a batch of ordinary size.
const EXPIRE_CHUNK: u64 = 4096;

/// Expires records until the log is closed or its last handle is dropped.
pub(super) async fn run(store: Arc<Store>, writer: Weak<WriterHandle>, retention: Retention) {
    let mut frontier = store.frontier.subscribe();
    loop {
        match expire_once(&store, &writer, &retention).await {
            Ok(()) => {}
            Err(LogError::Closed) => return,
            Err(error) => tracing::warn!(%error, "removing expired records from the log failed"),
        }
        tokio::select! {
            _ = frontier.wait_for(|frontier| frontier.closed) => return,
            () = tokio::time::sleep(EXPIRE_EVERY) => {}
        }
    }
}

/// Removes, from every partition of every expiring topic, the records older than it keeps.
async fn expire_once(
    store: &Arc<Store>,
    writer: &Weak<WriterHandle>,
    retention: &Retention,
) -> Result<(), LogError> {
    for (topic, kept) in retention.expiring() {
        let cutoff = now_ms().saturating_sub(i64::try_from(kept.as_millis()).unwrap_or(i64::MAX));
        for partition in 0..store.partitions {
            let searched = Arc::clone(store);
            let before =
                blocking(move || searched.first_taken_at(topic, partition, cutoff)).await?;
            expire_before(store, writer, topic, partition, before).await?;
        }
    }
    Ok(())
}

/// Has the writer remove a partition's records before `before`, a chunk at a time.
async fn expire_before(
    store: &Store,
    writer: &Weak<WriterHandle>,
    topic: Topic,
    partition: u32,
    before: u64,
) -> Result<(), LogError> {
    let slot = store.slot(topic, partition);
    let first = store.start(slot);
    let mut start = first;
    while start < before {
        let chunk_end = before.min(start + EXPIRE_CHUNK);
        let removed = match writer.upgrade() {
            Some(writer) => writer.request(|reply| Request::Expire {
                topic,
                partition,
                slot,
                before: chunk_end,
                reply,
            }),
            None => return Err(LogError::Closed),
        };
        removed.await?;
        start = chunk_end;
    }
    if before > first {
        tracing::debug!(%topic, partition, records = before - first, "expired old records");
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}
