//! The embedded log: a durable, partitioned log in a local directory, built on fjall.
//!
//! This is the log of the one-process setup (see DESIGN.md): nothing to install, yet an append is
//! acknowledged only once it is on disk, so a `kill -9` loses nothing that was acknowledged.
//!
//! The pieces:
//!
//! - [`format`]: one fjall keyspace per topic-partition, offsets as big-endian keys.
//! - [`writer`]: the single writer thread. fsync is the cost of durability, so appends are not
//!   written one by one: they queue on a channel and the writer drains whatever is pending into
//!   one atomic batch, syncs once, then answers everyone (group commit). It is also the only
//!   place offsets are assigned, which is what keeps them dense and ordered without locks.
//! - [`reader`]: readers scan partitions up to the *durable frontier* the writer publishes after
//!   each sync, never further, so nothing is read before it is acknowledged; they sleep on that
//!   frontier when caught up.

mod expiry;
mod format;
mod reader;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use switchboard_schemas::{Position, Topic};
use tokio::sync::{mpsc, oneshot, watch};

use super::retention::Retention;
use super::{Appending, Cursor, Log, LogError, LogReader, Member, Record};
use reader::EmbeddedReader;
use writer::Request;

/// Consumer group names become fjall keys, which must be non-empty and short.
const MAX_GROUP_LEN: usize = 1024;

/// The most a partition holds in memory before fjall writes it out to a table file.
///
/// fjall checks its journals' size (see `embedded_db`) only when some memtable fills up. At
/// fjall's default of 64 MiB per memtable, with the records spread over every topic's
/// partitions, no partition filled one for the first gigabyte of records: until then, the
/// journal grew without bound and every record stayed in memory as well. Set when a partition is
/// created; an existing one keeps the size it was created with.
const PARTITION_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;

/// A durable, partitioned log stored in a local directory. See the [module docs](self).
///
/// Clones share one log. Dropping the last clone stops the writer thread after it has written
/// what was already queued, as [`Log::close`] does.
#[derive(Clone)]
pub struct EmbeddedLog {
    store: Arc<Store>,
    writer: Arc<WriterHandle>,
    /// The consumer groups read in this process, and by how many readers.
    groups: Arc<Mutex<BTreeMap<String, GroupReaders>>>,
    /// The name this process goes by among a group's members.
    member: Arc<str>,
}

/// The readers of one consumer group in this process.
struct GroupReaders {
    topics: Vec<Topic>,
    count: usize,
}

/// What readers and the writer share: the database and where each partition durably ends.
struct Store {
    db: Database,
    partitions: u32,
    /// One keyspace per topic-partition, indexed by [`Store::slot`].
    logs: Vec<Keyspace>,
    /// The partition count, and where each partition starts once retention has removed records.
    meta: Keyspace,
    consumers: Keyspace,
    frontier: watch::Sender<Frontier>,
}

/// What the writer has made durable; readers never look past it.
#[derive(Debug)]
struct Frontier {
    /// The first offset each partition still keeps, indexed by [`Store::slot`]: records before
    /// it have expired ([`retention`](crate::log::retention)). Moved before the records go, so
    /// a reader that finds them gone knows why.
    starts: Vec<u64>,
    /// The next offset of each partition, indexed by [`Store::slot`].
    ends: Vec<u64>,
    /// The writer has stopped: no record will ever come after `ends`.
    closed: bool,
}

/// Owned only by [`EmbeddedLog`] clones, not by readers, so that dropping the last log handle
/// stops the writer even while readers are still around.
///
/// The queue to the writer is unbounded because an append must take its place without waiting
/// (see [`Log::append`]). What bounds it is upstream: each socket has a few ops in flight at
/// most, and every HTTP request is one.
struct WriterHandle {
    requests: RwLock<Option<mpsc::UnboundedSender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`, with `partitions` partitions for every topic.
    ///
    /// The partition count is fixed when the log is created: a key's partition depends on it, so
    /// opening an existing log with another count fails instead of silently scattering keys.
    ///
    /// Opening blocks while fjall replays its journal; call it before serving, or from
    /// `spawn_blocking`. Only one `EmbeddedLog` at a time may hold a directory.
    pub fn open(dir: &Path, partitions: u32) -> Result<EmbeddedLog, LogError> {
        if partitions == 0 {
            return Err(LogError::Storage("a log needs at least one partition per topic".into()));
        }
        let shown = dir.display();
        std::fs::create_dir_all(dir)
            .map_err(|e| LogError::Storage(format!("creating log directory {shown}: {e}")))?;
        // Every write is made durable explicitly: by the writer's sync after each batch.
        let db = crate::embedded_db::builder(dir).manual_journal_persist(true).open().map_err(|e| {
            LogError::Storage(match e {
                fjall::Error::Locked => format!(
                    "another process holds the log in {shown} (a running node?): an embedded log \
                     is open in one process at a time"
                ),
                e => format!("opening log in {shown}: {e}"),
            })
        })?;
        let storage =
            |what: &str, e: fjall::Error| LogError::Storage(format!("{what} in {shown}: {e}"));

        let meta = db
            .keyspace(format::META_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(|e| storage("opening the meta keyspace", e))?;
        match meta
            .get(format::PARTITIONS_KEY)
            .map_err(|e| storage("reading the partition count", e))?
        {
            Some(stored) => {
                let stored =
                    <[u8; 4]>::try_from(&*stored).map(u32::from_be_bytes).map_err(|_| {
                        LogError::Storage(format!("{shown} holds an unreadable partition count"))
                    })?;
                if stored != partitions {
                    return Err(LogError::Storage(format!(
                        "{shown} holds a log with {stored} partitions per topic, but it was \
                         opened with {partitions}; keys would move to other partitions and lose \
                         their order, so the log is never re-partitioned in place: open it with \
                         {stored} partitions, or replay it into a new directory"
                    )));
                }
            }
            None => {
                meta.insert(format::PARTITIONS_KEY, partitions.to_be_bytes())
                    .map_err(|e| storage("recording the partition count", e))?;
            }
        }

        let mut logs = Vec::with_capacity(Topic::ALL.len() * partitions as usize);
        let mut starts = Vec::with_capacity(logs.capacity());
        let mut ends = Vec::with_capacity(logs.capacity());
        let mut latest_timestamp_ms = i64::MIN;
        for topic in Topic::ALL {
            for partition in 0..partitions {
                let name = format::partition_keyspace(topic, partition);
                let keyspace = db
                    .keyspace(&name, || {
                        KeyspaceCreateOptions::default().max_memtable_size(PARTITION_MEMTABLE_BYTES)
                    })
                    .map_err(|e| storage(&format!("opening partition {name}"), e))?;
                let start = match meta
                    .get(format::start_key(topic, partition))
                    .map_err(|e| storage(&format!("reading where {name} starts"), e))?
                {
                    Some(stored) => format::decode_offset(&stored).ok_or_else(|| {
                        LogError::Storage(format!("{shown} holds an unreadable start of {name}"))
                    })?,
                    None => 0,
                };
                let tail = recover_tail(&keyspace, &name, dir)?;
                starts.push(start);
                // A partition whose records have all expired is empty, yet still ends where
                // its last record did.
                ends.push(tail.end.max(start));
                latest_timestamp_ms = latest_timestamp_ms.max(tail.timestamp_ms);
                logs.push(keyspace);
            }
        }
        let consumers = db
            .keyspace(format::CONSUMERS_KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(|e| storage("opening the consumer positions", e))?;
        // Whatever recovery found (including records written but never acknowledged before a
        // crash) is now served to readers, so it has to be as durable as everything else.
        db.persist(PersistMode::SyncAll).map_err(|e| storage("syncing the recovered log", e))?;

        let (frontier, _) = watch::channel(Frontier { starts, ends, closed: false });
        let store = Arc::new(Store { db, partitions, logs, meta, consumers, frontier });
        let (requests, receiver) = mpsc::unbounded_channel();
        let thread = writer::spawn(Arc::clone(&store), receiver, latest_timestamp_ms)
            .map_err(|e| LogError::Storage(format!("starting the log writer thread: {e}")))?;
        Ok(EmbeddedLog {
            store,
            writer: Arc::new(WriterHandle {
                requests: RwLock::new(Some(requests)),
                thread: Mutex::new(Some(thread)),
            }),
            groups: Arc::default(),
            member: Arc::from("switchboard"),
        })
    }

    /// The log, going by `member` among the members of the groups read through it.
    pub fn with_member(mut self, member: &str) -> EmbeddedLog {
        self.member = Arc::from(member);
        self
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, GroupReaders>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the records `retention` no longer keeps, now and then every minute or so, until
    /// the log is closed. A node's log does this; tools reading a log leave it as it is.
    /// Needs a Tokio runtime.
    pub fn expire(&self, retention: Retention) {
        tokio::spawn(expiry::run(Arc::clone(&self.store), Arc::downgrade(&self.writer), retention));
    }
}

/// Where a partition stands when the log is opened.
struct Tail {
    /// The offset the next append gets: one past the last stored record.
    end: u64,
    /// When the last record was taken; `i64::MIN` for an empty partition.
    timestamp_ms: i64,
}

fn recover_tail(keyspace: &Keyspace, name: &str, dir: &Path) -> Result<Tail, LogError> {
    let Some(last) = keyspace.last_key_value() else {
        return Ok(Tail { end: 0, timestamp_ms: i64::MIN });
    };
    let damaged =
        |what: &str| LogError::Storage(format!("partition {name} in {} {what}", dir.display()));
    let (key, value) =
        last.into_inner().map_err(|e| damaged(&format!("cannot be read at its end: {e}")))?;
    let end = format::decode_offset(&key)
        .map(|offset| offset + 1)
        .ok_or_else(|| damaged("holds a key that is not an offset"))?;
    let timestamp_ms =
        format::decode_timestamp(&value).ok_or_else(|| damaged("ends with a truncated record"))?;
    Ok(Tail { end, timestamp_ms })
}

impl Store {
    /// Index of a topic-partition in [`Store::logs`] and [`Frontier::ends`].
    fn slot(&self, topic: Topic, partition: u32) -> usize {
        topic as usize * self.partitions as usize + partition as usize
    }

    /// The offset of the first record a partition took at or after `time_ms`, or its end.
    /// Blocking.
    fn first_taken_at(&self, topic: Topic, partition: u32, time_ms: i64) -> Result<u64, LogError> {
        let slot = self.slot(topic, partition);
        let log = &self.logs[slot];
        let (start, end) = {
            let frontier = self.frontier.borrow();
            (frontier.starts[slot], frontier.ends[slot])
        };
        // `None` for a record that is gone.
        let taken_at = |offset: u64| -> Result<Option<i64>, LogError> {
            let position = Position { topic, partition, offset };
            let stored = log
                .get(format::offset_key(offset))
                .map_err(|e| LogError::Storage(format!("reading record {position}: {e}")))?;
            stored
                .map(|stored| {
                    format::decode_timestamp(&stored)
                        .ok_or_else(|| LogError::Storage(format!("record {position} is truncated")))
                })
                .transpose()
        };
        let (mut low, mut high) = (start, end);
        while low < high {
            let middle = low + (high - low) / 2;
            match taken_at(middle)? {
                Some(taken) if taken < time_ms => low = middle + 1,
                Some(_) => high = middle,
                // Expired while searching: nothing before the new start exists any more.
                None if middle < self.start(slot) => low = low.max(self.start(slot)).min(high),
                None => {
                    return Err(LogError::Storage(format!(
                        "record {topic}.{partition}@{middle} is missing below the end of its \
                         partition"
                    )));
                }
            }
        }
        Ok(low)
    }

    /// The first offset a partition still keeps.
    fn start(&self, slot: usize) -> u64 {
        self.frontier.borrow().starts[slot]
    }

    fn check_partition(&self, topic: Topic, partition: u32) -> Result<(), LogError> {
        if partition < self.partitions {
            Ok(())
        } else {
            Err(LogError::Storage(format!(
                "partition {topic}.{partition} does not exist: topics have {} partitions",
                self.partitions
            )))
        }
    }
}

impl WriterHandle {
    /// Queues a request for the writer now; the future waits for its answer.
    fn request<T: Send + 'static>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Request,
    ) -> impl Future<Output = Result<T, LogError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        // The sender is not kept: one held while waiting would keep the writer running, waiting
        // for our own answer.
        let queued = match self.sender() {
            Some(sender) => sender.send(request(reply)).map_err(|_| LogError::Closed),
            None => Err(LogError::Closed),
        };
        async move {
            queued?;
            answer.await.map_err(|_| {
                LogError::Unavailable(
                    "the log writer stopped before confirming; the write may or may not be stored"
                        .into(),
                )
            })?
        }
    }

    /// A sender to the writer, or `None` once the log is closed.
    fn sender(&self) -> Option<mpsc::UnboundedSender<Request>> {
        self.requests.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops taking requests; the writer finishes what is queued, then exits.
    fn stop(&self) {
        drop(self.requests.write().unwrap_or_else(PoisonError::into_inner).take());
    }

    fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.thread.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.take_thread() {
            // The writer has only the queued batch left to sync; waiting for it here means the
            // directory is released (and reopenable) as soon as the last handle is gone.
            if thread.join().is_err() {
                tracing::error!("the embedded log writer thread panicked");
            }
        }
    }
}

/// Runs a blocking fjall read off the async worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LogError::Storage(format!("log read task failed: {e}")))?
}

#[async_trait]
impl Log for EmbeddedLog {
    fn append(&self, topic: Topic, key: &[u8], value: Vec<u8>) -> Appending {
        let partition = Topic::partition_for(key, self.store.partitions);
        let slot = self.store.slot(topic, partition);
        let key = key.to_vec();
        Box::pin(self.writer.request(|reply| Request::Append {
            topic,
            partition,
            slot,
            key,
            value,
            reply,
        }))
    }

    fn partitions(&self, _topic: Topic) -> u32 {
        self.store.partitions
    }

    async fn end_offsets(&self, topic: Topic) -> Result<Vec<u64>, LogError> {
        let first = self.store.slot(topic, 0);
        let frontier = self.store.frontier.borrow();
        Ok(frontier.ends[first..first + self.store.partitions as usize].to_vec())
    }

    /// A binary search over each partition's timestamps, which the writer keeps from going
    /// backwards.
    async fn offsets_at(&self, topic: Topic, time_ms: i64) -> Result<Vec<u64>, LogError> {
        let store = Arc::clone(&self.store);
        blocking(move || {
            (0..store.partitions)
                .map(|partition| store.first_taken_at(topic, partition, time_ms))
                .collect()
        })
        .await
    }

    async fn reader(&self, from: Cursor) -> Result<Box<dyn LogReader>, LogError> {
        for (topic, partition, _) in from.iter() {
            self.store.check_partition(topic, partition)?;
        }
        if from.iter().next().is_none() {
            return Err(LogError::Storage(
                "a reader needs a cursor naming at least one partition".into(),
            ));
        }
        Ok(Box::new(EmbeddedReader::new(Arc::clone(&self.store), &from)))
    }

    /// One process owns an embedded log, so a group has one reader, which gets every partition.
    async fn join_group(
        &self,
        group: &str,
        topics: &[Topic],
        start: Cursor,
    ) -> Result<Box<dyn LogReader>, LogError> {
        let from = Cursor::beginning(self, topics)
            .furthest(&self.committed(group).await?)
            .furthest(&start);
        let reader = self.reader(from).await?;
        self.lock_groups()
            .entry(group.to_owned())
            .or_insert_with(|| GroupReaders { topics: topics.to_vec(), count: 0 })
            .count += 1;
        Ok(Box::new(GroupReader { reader, log: self.clone(), group: group.to_owned() }))
    }

    /// One process holds an embedded log, so a group read here has one member, this process,
    /// holding every partition of its topics.
    async fn members(&self, group: &str) -> Result<Vec<Member>, LogError> {
        let groups = self.lock_groups();
        Ok(groups
            .get(group)
            .map(|readers| Member {
                name: self.member.to_string(),
                partitions: readers
                    .topics
                    .iter()
                    .flat_map(|&topic| (0..self.store.partitions).map(move |p| (topic, p)))
                    .collect(),
            })
            .into_iter()
            .collect())
    }

    async fn committed(&self, group: &str) -> Result<Cursor, LogError> {
        check_group(group)?;
        let store = Arc::clone(&self.store);
        let group = group.to_owned();
        blocking(move || {
            let stored = store.consumers.get(&group).map_err(|e| {
                LogError::Storage(format!("reading the committed position of `{group}`: {e}"))
            })?;
            let Some(stored) = stored else {
                return Ok(Cursor::default());
            };
            std::str::from_utf8(&stored).map_err(|e| e.to_string()).and_then(str::parse).map_err(
                |e| {
                    LogError::Storage(format!("committed position of `{group}` is unreadable: {e}"))
                },
            )
        })
        .await
    }

    async fn commit(&self, group: &str, cursor: &Cursor) -> Result<(), LogError> {
        check_group(group)?;
        // Through the writer, so a commit shares the sync of the appends around it.
        let group = group.to_owned();
        let cursor = cursor.to_string();
        self.writer.request(|reply| Request::Commit { group, cursor, reply }).await
    }

    async fn close(&self) -> Result<(), LogError> {
        self.writer.stop();
        let mut frontier = self.store.frontier.subscribe();
        // The store holds the frontier's sender, and we hold the store: this cannot fail.
        let _ = frontier.wait_for(|f| f.closed).await;
        if let Some(thread) = self.writer.take_thread() {
            // The writer has already announced it is done, so this join returns at once.
            thread
                .join()
                .map_err(|_| LogError::Storage("the log writer thread panicked".into()))?;
        }
        Ok(())
    }
}

/// A reader that commits its group's position to the log it reads.
struct GroupReader {
    reader: Box<dyn LogReader>,
    log: EmbeddedLog,
    group: String,
}

impl Drop for GroupReader {
    fn drop(&mut self) {
        let mut groups = self.log.lock_groups();
        if let Some(readers) = groups.get_mut(&self.group) {
            readers.count -= 1;
            if readers.count == 0 {
                groups.remove(&self.group);
            }
        }
    }
}

#[async_trait]
impl LogReader for GroupReader {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        self.reader.next_batch(max).await
    }

    async fn commit(&mut self, cursor: &Cursor) -> Result<(), LogError> {
        self.log.commit(&self.group, cursor).await
    }
}

fn check_group(group: &str) -> Result<(), LogError> {
    if group.is_empty() || group.len() > MAX_GROUP_LEN {
        return Err(LogError::Storage(format!(
            "a consumer group name must be 1 to {MAX_GROUP_LEN} bytes long"
        )));
    }
    Ok(())
}
