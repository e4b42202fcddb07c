//! How every embedded database of a node is opened: the log, the read models and the feeds are
//! each a fjall database.

use std::path::Path;

use fjall::{Database, DatabaseBuilder};

/// fjall's flush and compaction workers per database.
///
/// fjall (3.1) keeps its first worker for flushes: a compaction request that reaches it is put
/// back in the queue at once for another worker. With the default of one worker per core, two on
/// a 2-core machine, the first worker spun on that request for as long as the other compacted
/// (17% of a node's CPU samples in one profile at 30,000 messages/s, on the feeds). With three, a
/// request put back finds a worker that is free, or one whose compaction finds nothing left to do
/// and returns at once.
const WORKERS: usize = 3;

/// fjall's builder for a database in `dir`, with the settings every database here shares.
pub fn builder(dir: &Path) -> DatabaseBuilder<Database> {
    Database::builder(dir).worker_threads(WORKERS)
}
