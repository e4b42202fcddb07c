//! The projector loop: read, decode, apply, checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switchboard_ingest::log::{Cursor, Log, LogError, Record};
use switchboard_schemas::{Codec, Position, Topic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Progress;
use crate::store::{Logged, ReadModel, StoreError};

/// The topics the read models are built from.
pub const PROJECTED_TOPICS: [Topic; 5] =
    [Topic::Users, Topic::Conversations, Topic::Messages, Topic::Presence, Topic::Calls];

/// The consumer group the projector workers share the log's partitions in.
pub const GROUP: &str = "projector";

/// How many records one read-model write takes at most while following the log: few enough
/// that a message is projected soon after it was sent.
const BATCH: usize = 2048;

/// How many records one read-model write takes at most while catching up. Larger, because
/// nobody waits on any one event: every batch ends in a sync, rewrites the rows its events share
/// (a conversation's stats, a sender's read marker) once, and in the embedded store is folded
/// and committed in parts that overlap, a pipeline that empties at the end of every batch.
const CATCH_UP_BATCH: usize = 32768;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProjectorError {
    /// Whether the log or the store was out of reach for now, so that trying again later, from
    /// the store's checkpoint, may well get further.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProjectorError::Log(LogError::Unavailable(_))
                | ProjectorError::Store(StoreError::Unavailable(_))
        )
    }
}

pub struct Projector {
    log: Arc<dyn Log>,
    store: Arc<dyn ReadModel>,
    progress: Progress,
    codec: Codec,
    /// Events applied so far, by every run of this projector.
    applied: AtomicU64,
}

impl Projector {
    pub fn new(log: Arc<dyn Log>, store: Arc<dyn ReadModel>, progress: Progress) -> Projector {
        Projector { log, store, progress, codec: Codec::new(), applied: AtomicU64::new(0) }
    }

    /// How many events this projector has applied, in batches the store took whole: a batch
    /// that failed counts only once it is applied again.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Where the read models stand now: the store's checkpoint, with partitions it has never
    /// seen starting at offset 0.
    pub async fn checkpoint(&self) -> Result<Cursor, ProjectorError> {
        let stored = self.store.checkpoint().await?;
        Ok(stored.or(&Cursor::beginning(self.log.as_ref(), &PROJECTED_TOPICS)))
    }

    /// Follows the log as a member of the projector group until `stop` is cancelled. Each batch
    /// is applied and checkpointed before the group's offsets are committed and the next batch
    /// read, so a crash resumes after the last applied batch, and anything applied twice is
    /// applied idempotently.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ProjectorError> {
        let mut cursor = self.checkpoint().await?;
        self.progress.advance(cursor.clone());
        tracing::info!(%cursor, "projector starting");
        let mut reader = self.log.join_group(GROUP, &PROJECTED_TOPICS, cursor.clone()).await?;
        loop {
            let records = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                records = reader.next_batch(BATCH) => records?,
            };
            self.apply(Decoded::new(self.codec, records, &mut cursor)).await?;
            reader.commit(&cursor).await?;
        }
    }

    /// Applies the log from the checkpoint up to (not including) the offsets in `until`, then
    /// returns how many events it applied. Records past `until` are left for a later run, so
    /// the result is the state of the log as of `until` even while appends go on.
    ///
    /// The next batch is read and decoded while the store applies the one before it, so a
    /// rebuild takes as long as the slower of the two rather than both.
    pub async fn catch_up(&self, until: &Cursor) -> Result<u64, ProjectorError> {
        let cursor = self.checkpoint().await?;
        self.progress.advance(cursor.clone());
        let (decoded, mut to_apply) = mpsc::channel(1);
        let read = self.read_until(cursor, until, decoded);
        let apply = async move {
            let mut applied = 0;
            while let Some(batch) = to_apply.recv().await {
                applied += self.apply(batch).await?;
            }
            Ok(applied)
        };
        let ((), applied) = tokio::try_join!(read, apply)?;
        Ok(applied)
    }

    /// Reads and decodes the log from `cursor` up to `until` into `batches`, stopping early if
    /// nothing takes them any more.
    async fn read_until(
        &self,
        mut cursor: Cursor,
        until: &Cursor,
        batches: mpsc::Sender<Decoded>,
    ) -> Result<(), ProjectorError> {
        let behind = |cursor: &Cursor| {
            until
                .iter()
                .any(|(topic, partition, end)| cursor.get(topic, partition).unwrap_or(0) < end)
        };
        if !behind(&cursor) {
            return Ok(());
        }
        let mut reader = self.log.reader(cursor.clone()).await?;
        while behind(&cursor) {
            let mut records = reader.next_batch(CATCH_UP_BATCH).await?;
            // A partition's records come in order: one at or past `until` means that partition
            // has nothing left before it, even when the log no longer keeps the records between
            // the checkpoint and `until` (retention took them).
            for record in records.iter().filter(|record| !until.has_passed(record.position)) {
                let Position { topic, partition, .. } = record.position;
                if let Some(end) = until.get(topic, partition) {
                    cursor.set(
                        topic,
                        partition,
                        end.max(cursor.get(topic, partition).unwrap_or(0)),
                    );
                }
            }
            records.retain(|record| until.has_passed(record.position));
            // A batch wholly past `until` has nothing to write.
            if records.is_empty() {
                continue;
            }
            // On the blocking pool: a catch-up batch takes tens of milliseconds to decode, and
            // the task that runs this one also hands the store its next batch, which would wait
            // that long each time.
            let codec = self.codec;
            let decoding = tokio::task::spawn_blocking(move || {
                let batch = Decoded::new(codec, records, &mut cursor);
                (batch, cursor)
            });
            let (batch, advanced) =
                decoding.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            cursor = advanced;
            if batches.send(batch).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Applies a decoded batch with the checkpoint moved past it, and tells waiters. Returns how
    /// many events were applied.
    async fn apply(&self, batch: Decoded) -> Result<u64, ProjectorError> {
        // Only the partitions of this batch: in a group, the others may belong to another worker.
        let applied = batch.events.len() as u64;
        self.store.apply(batch.events, &batch.touched).await?;
        self.applied.fetch_add(applied, Ordering::Relaxed);
        metrics::counter!("projector_events_applied_total").increment(applied);
        self.progress.advance(batch.reached);
        Ok(applied)
    }
}

/// A batch of records, decoded.
struct Decoded {
    events: Vec<Logged>,
    /// The partitions the records came from, each past its last record.
    touched: Cursor,
    /// Where the read models stand once the batch is applied.
    reached: Cursor,
}

impl Decoded {
    /// Decodes `records` and moves `cursor` past them.
    fn new(codec: Codec, records: Vec<Record>, cursor: &mut Cursor) -> Decoded {
        let mut events = Vec::with_capacity(records.len());
        let mut touched = Cursor::default();
        for record in records {
            cursor.advance(record.position);
            touched.advance(record.position);
            match codec.decode(&record.value) {
                Ok(event) => events.push(Logged { position: record.position, event }),
                // A record no schema can read is skipped rather than stopping every read
                // model behind it; it stays in the log for inspection.
                Err(error) => {
                    metrics::counter!("projector_undecodable_records_total").increment(1);
                    tracing::error!(position = %record.position, %error, "skipping undecodable record");
                }
            }
        }
        Decoded { events, touched, reached: cursor.clone() }
    }
}
