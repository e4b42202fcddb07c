//! How every embedded database of a node is opened: the log, the read models and the feeds are
//! each a fjall database.

use std::path::Path;

use fjall::{Database, DatabaseBuilder};

/// fjall's flush and compaction workers per database.
///
/// fjall (3.1) keeps its first worker for flushes: a compaction request that reaches it is put
/// back in the queue at once for another worker. With the default of one worker per core, two on
/// a 2-core machine, the first worker spun on that request for as long as the other compacted
/// (17% of a node's CPU samples in one profile at 30,000 messages/s, on the feeds). With three, it
/// still spun whenever the other two were busy at once, as the feeds of groups keep them (a
/// flush of one memtable and of the next): about a quarter of the workers' time in a profile of
/// groups of 100. With five, a request put back nearly always finds a worker that is free; idle
/// workers only wait on the queue.
const WORKERS: usize = 5;

/// The most a database's journals may hold before fjall flushes the memtables they back.
///
/// fjall replays its journals into memtables when a database opens, and the memtables they back
/// stay in memory. At fjall's default of 512 MiB per database, a node that had taken 40 s at
/// 15,000 messages/s left 1.1 GB of journals across its log, store and feeds, and its next start
/// spent 8–10 s replaying them before it served. This is fjall's smallest setting.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;

/// fjall's builder for a database in `dir`, with the settings every database here shares.
pub fn builder(dir: &Path) -> DatabaseBuilder<Database> {
    Database::builder(dir).worker_threads(WORKERS).max_journaling_size(MAX_JOURNALING_BYTES)
}
