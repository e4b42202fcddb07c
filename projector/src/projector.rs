//! The projector loop: read, decode, apply, checkpoint.

use std::sync::Arc;

use switchboard_ingest::log::{Cursor, Log, LogError};
use switchboard_schemas::{Codec, Topic};
use tokio_util::sync::CancellationToken;

use crate::Progress;
use crate::store::{Logged, ReadModel, StoreError};

/// The topics the read models are built from.
pub const PROJECTED_TOPICS: [Topic; 4] =
    [Topic::Users, Topic::Conversations, Topic::Messages, Topic::Presence];

/// How many records one read-model write takes at most.
const BATCH: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Projector {
    log: Arc<dyn Log>,
    store: Arc<dyn ReadModel>,
    progress: Progress,
    codec: Codec,
}

impl Projector {
    pub fn new(log: Arc<dyn Log>, store: Arc<dyn ReadModel>, progress: Progress) -> Projector {
        Projector { log, store, progress, codec: Codec::new() }
    }

    /// Where the read models stand now: the store's checkpoint, with partitions it has never
    /// seen starting at offset 0.
    pub async fn checkpoint(&self) -> Result<Cursor, ProjectorError> {
        let stored = self.store.checkpoint().await?;
        Ok(stored.or(&Cursor::beginning(self.log.as_ref(), &PROJECTED_TOPICS)))
    }

    /// Follows the log until `stop` is cancelled. Each batch is applied and checkpointed before
    /// the next is read, so a crash resumes exactly after the last applied batch.
    pub async fn run(self, stop: CancellationToken) -> Result<(), ProjectorError> {
        let mut cursor = self.checkpoint().await?;
        self.progress.advance(cursor.clone());
        tracing::info!(%cursor, "projector starting");
        let mut reader = self.log.reader(cursor.clone()).await?;
        loop {
            let records = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                records = reader.next_batch(BATCH) => records?,
            };
            let mut events = Vec::with_capacity(records.len());
            for record in records {
                cursor.advance(record.position);
                match self.codec.decode(&record.value) {
                    Ok(event) => events.push(Logged { position: record.position, event }),
                    // A record no schema can read is skipped rather than stopping every read
                    // model behind it; it stays in the log for inspection.
                    Err(error) => {
                        metrics::counter!("projector_undecodable_records_total").increment(1);
                        tracing::error!(position = %record.position, %error, "skipping undecodable record");
                    }
                }
            }
            self.store.apply(&events, &cursor).await?;
            metrics::counter!("projector_events_applied_total").increment(events.len() as u64);
            self.progress.advance(cursor.clone());
        }
    }
}
