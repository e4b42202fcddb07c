//! Feeds in a local fjall database, for a switchboard that runs as one process.
//!
//! Five keyspaces:
//! - `entries`, keyed by user and number (both big-endian, so a user's entries are one ordered
//!   range), holding the append time and the frame, or where the frame is kept when it is shared;
//! - `frames`, the frames of events pushed to [`SHARED_FROM`] users or more, once each, keyed by
//!   the event's log position, and `frame_refs`, how many entries still refer to each: a group's
//!   message is written once, not once per member, and goes when retention has trimmed it from
//!   every member's feed;
//! - `heads`, one record per user with what its entries cannot tell: the feed's epoch, and where
//!   it stood when retention last trimmed it;
//! - `taken`, per source partition (`messages.3`), the next offset the feeds take.
//!
//! An append writes its entries and where each source partition now stands as one atomic batch,
//! so after a crash the feeds hold an append whole or not at all, and the stage, resuming from
//! before it, fills in exactly what is missing. Because appends are whole, one offset per source
//! partition says what every feed took, and an append writes one key per recipient: a head is
//! written when its feed is created and when retention trims it, not with every entry. Where a
//! feed stands is read once, from its head and its newest entry, the first time the user is seen
//! since the start, and kept in memory from then on.
//!
//! Every append is synced to disk before it returns. A feed is derived from the log, but the
//! delivery stage moves past what it appended as soon as the append returns: an entry lost
//! afterwards (in a crash or a power cut) would be lost for good, and its number handed to the
//! next entry, under tokens clients already hold.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use fjall::compaction::Leveled;
use fjall::config::FilterPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use serde::{Deserialize, Serialize};
use switchboard_schemas::UserId;
use tokio::sync::mpsc;

use super::{
    Delivery, Entry, FeedError, Feeds, Head, PUBLISHED_CAPACITY, Published, Retention, now_ms,
    source_key,
};

/// Feeds kept in a directory on local disk. See the module docs.
pub struct EmbeddedFeeds {
    db: Database,
    entries: Keyspace,
    frames: Keyspace,
    frame_refs: Keyspace,
    heads: Keyspace,
    taken: Keyspace,
    retention: Retention,
    /// Held across an append and its publishing, so that entries are published in the order
    /// they were numbered.
    state: tokio::sync::Mutex<State>,
    listener: Mutex<Listener>,
}

/// What the feeds know in memory.
#[derive(Default)]
struct State {
    /// Heads by user, loaded on first use.
    heads: HashMap<UserId, HeadRecord>,
    /// Per source partition, the next offset the feeds take.
    taken: HashMap<String, u64>,
}

#[derive(Default)]
struct Listener {
    published: Option<mpsc::Sender<Published>>,
    followed: HashSet<UserId>,
}

/// Where a feed stands. Stored as of its creation or its last trim; `seq` and `at` move on with
/// every entry, and are read back from the newest one.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct HeadRecord {
    epoch: u64,
    seq: u64,
    at: i64,
    first: u64,
    /// When the entry numbered `first` was appended.
    first_at: i64,
    /// A feed created since the start whose head is not stored yet.
    #[serde(skip)]
    unsaved: bool,
}

impl HeadRecord {
    fn new() -> HeadRecord {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_micros() as u64);
        HeadRecord { epoch, seq: 0, at: 0, first: 1, first_at: 0, unsaved: true }
    }

    fn head(&self) -> Head {
        Head { epoch: self.epoch, seq: self.seq, at: self.at, first: self.first }
    }

    /// Numbers the next entry, appended `now`.
    fn push(&mut self, now: i64) -> u64 {
        self.seq += 1;
        self.at = now;
        if self.first == self.seq {
            self.first_at = now;
        }
        self.seq
    }
}

fn storage(context: &str, error: impl std::fmt::Display) -> FeedError {
    FeedError::Storage(format!("{context}: {error}"))
}

fn entry_key(user: UserId, seq: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&(user.0 as u64).to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Events pushed to this many users or more keep their frame once, in `frames`, and each entry
/// refers to it. Fewer keep a copy in each entry: for a direct conversation's two, the copies
/// cost less than the shared frame, its count and a second read on a resume.
pub const SHARED_FROM: usize = 3;

/// What starts an entry's frame when the entry refers to a shared frame instead: never the
/// first byte of a frame, which is a JSON object.
const SHARED: u8 = 0;

/// What the entries of a shared frame hold in place of it: [`SHARED`], then the frame's key in
/// `frames`, the event's offset followed by its partition's name (`messages.3`).
fn shared_reference(offset: u64, partition: &str) -> Vec<u8> {
    let mut reference = Vec::with_capacity(1 + 8 + partition.len());
    reference.push(SHARED);
    reference.extend_from_slice(&offset.to_be_bytes());
    reference.extend_from_slice(partition.as_bytes());
    reference
}

/// An entry's value: when it was appended, then its frame, or [`SHARED`] and the key of the
/// shared frame.
fn entry_value(at: i64, frame: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + frame.len());
    value.extend_from_slice(&at.to_be_bytes());
    value.extend_from_slice(frame);
    value
}

fn corrupt_entry() -> FeedError {
    FeedError::Storage("a corrupt feed entry".to_owned())
}

/// An entry as stored: its number, when it was appended, and its frame or the key of the
/// shared frame.
struct Stored<'a> {
    seq: u64,
    at: i64,
    frame: StoredFrame<'a>,
}

enum StoredFrame<'a> {
    Own(&'a [u8]),
    Shared(&'a [u8]),
}

impl Stored<'_> {
    fn decode<'a>(key: &[u8], value: &'a [u8]) -> Result<Stored<'a>, FeedError> {
        let seq = key.get(8..16).ok_or_else(corrupt_entry)?;
        let at = value.get(..8).ok_or_else(corrupt_entry)?;
        let frame = match &value[8..] {
            [SHARED, shared @ ..] => StoredFrame::Shared(shared),
            own => StoredFrame::Own(own),
        };
        Ok(Stored {
            seq: u64::from_be_bytes(seq.try_into().expect("8 bytes")),
            at: i64::from_be_bytes(at.try_into().expect("8 bytes")),
            frame,
        })
    }
}

fn decode_frame(bytes: &[u8]) -> Result<Arc<str>, FeedError> {
    std::str::from_utf8(bytes).map(Arc::from).map_err(|_| corrupt_entry())
}

fn decode_count(value: &[u8]) -> Result<u64, FeedError> {
    let bytes = value.try_into().map_err(|_| storage("a corrupt frame count", "not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

fn decode_offset(value: &[u8]) -> Result<u64, FeedError> {
    let bytes = value.try_into().map_err(|_| storage("a corrupt offset taken", "not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The entries are written far more than read, and read only by ranges: no Bloom filters, which
/// only point reads use, and more memtables' worth of tables in level 0 before they are merged
/// into level 1. Each user's new entries sort among the old ones, so every merge rewrites about
/// all of level 1.
fn entries_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .filter_policy(FilterPolicy::disabled())
        .compaction_strategy(Arc::new(Leveled::default().with_l0_threshold(16)))
}

impl EmbeddedFeeds {
    /// Opens the feeds in `dir`, creating them if needed.
    pub fn open(dir: &Path, retention: Retention) -> Result<EmbeddedFeeds, FeedError> {
        let db = switchboard_ingest::embedded_db::builder(dir)
            .open()
            .map_err(|e| storage(&format!("opening {}", dir.display()), e))?;
        let keyspace = |name: &str, options: fn() -> KeyspaceCreateOptions| {
            db.keyspace(name, options)
                .map_err(|e| storage(&format!("opening keyspace `{name}`"), e))
        };
        let taken = keyspace("taken", KeyspaceCreateOptions::default)?;
        let mut state = State::default();
        for item in taken.iter() {
            let (source, offset) = item.into_inner().map_err(|e| storage("reading offsets", e))?;
            let source = String::from_utf8(source.to_vec())
                .map_err(|e| storage("a corrupt source partition", e))?;
            state.taken.insert(source, decode_offset(&offset)?);
        }
        Ok(EmbeddedFeeds {
            entries: keyspace("entries", entries_options)?,
            frames: keyspace("frames", KeyspaceCreateOptions::default)?,
            frame_refs: keyspace("frame_refs", KeyspaceCreateOptions::default)?,
            heads: keyspace("heads", KeyspaceCreateOptions::default)?,
            taken,
            db,
            retention,
            state: tokio::sync::Mutex::new(state),
            listener: Mutex::default(),
        })
    }

    /// Where `user`'s feed stands, read from disk the first time.
    fn load(
        &self,
        heads: &mut HashMap<UserId, HeadRecord>,
        user: UserId,
    ) -> Result<HeadRecord, FeedError> {
        if let Some(record) = heads.get(&user) {
            return Ok(*record);
        }
        let stored =
            self.heads.get(user.0.to_be_bytes()).map_err(|e| storage("reading a head", e))?;
        let mut record = match stored {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| storage("a corrupt head", e))?
            }
            None => HeadRecord::new(),
        };
        let after_stored =
            entry_key(user, record.seq.saturating_add(1))..=entry_key(user, u64::MAX);
        if let Some(item) = self.entries.range(after_stored).next_back() {
            let (key, value) = item.into_inner().map_err(|e| storage("reading a feed", e))?;
            let newest = Stored::decode(&key, &value)?;
            (record.seq, record.at) = (newest.seq, newest.at);
        }
        heads.insert(user, record);
        Ok(record)
    }

    /// Drops the entries of `record`'s feed that retention no longer keeps, adding the removals
    /// to `batch` and counting the shared frames they referred to in `released`. Whether the
    /// record changed.
    fn trim(
        &self,
        user: UserId,
        record: &mut HeadRecord,
        batch: &mut OwnedWriteBatch,
        released: &mut HashMap<Vec<u8>, u64>,
        now: i64,
    ) -> Result<bool, FeedError> {
        let Retention { window, min_events } = self.retention;
        let cutoff = now - window.as_millis() as i64;
        let kept_from = record.seq.saturating_sub(min_events) + 1;
        if record.first >= kept_from || record.first_at >= cutoff {
            return Ok(false);
        }
        for item in
            self.entries.range(entry_key(user, record.first)..entry_key(user, record.seq + 1))
        {
            let (key, value) = item.into_inner().map_err(|e| storage("trimming a feed", e))?;
            let entry = Stored::decode(&key, &value)?;
            if entry.seq >= kept_from || entry.at >= cutoff {
                record.first = entry.seq;
                record.first_at = entry.at;
                return Ok(true);
            }
            if let StoredFrame::Shared(frame) = entry.frame {
                *released.entry(frame.to_vec()).or_default() += 1;
            }
            batch.remove(&self.entries, key);
        }
        record.first = record.seq + 1;
        Ok(true)
    }

    /// Takes the entries trimmed in `released` off their shared frames' counts, adding to
    /// `batch` the removal of each frame no entry refers to any more. The frames were all shared
    /// by earlier appends: an entry is never trimmed in the append that adds it.
    fn release(
        &self,
        released: HashMap<Vec<u8>, u64>,
        batch: &mut OwnedWriteBatch,
    ) -> Result<(), FeedError> {
        for (frame, trimmed) in released {
            let stored =
                self.frame_refs.get(&frame).map_err(|e| storage("reading a frame's count", e))?;
            let left = stored.as_deref().map(decode_count).transpose()?.unwrap_or(0);
            match left.saturating_sub(trimmed) {
                0 => {
                    batch.remove(&self.frame_refs, frame.clone());
                    batch.remove(&self.frames, frame);
                }
                left => batch.insert(&self.frame_refs, frame, left.to_be_bytes()),
            }
        }
        Ok(())
    }

    /// The entry `key` and `value` hold, its frame read from `frames` when it is shared.
    fn entry(&self, key: &[u8], value: &[u8]) -> Result<Entry, FeedError> {
        let stored = Stored::decode(key, value)?;
        let frame = match stored.frame {
            StoredFrame::Own(frame) => decode_frame(frame)?,
            StoredFrame::Shared(frame) => {
                let shared =
                    self.frames.get(frame).map_err(|e| storage("reading a shared frame", e))?;
                decode_frame(&shared.ok_or_else(|| storage("a shared frame", "missing"))?)?
            }
        };
        Ok(Entry { seq: stored.seq, at: stored.at, frame })
    }

    fn save_head(&self, user: UserId, record: &mut HeadRecord, batch: &mut OwnedWriteBatch) {
        record.unsaved = false;
        let bytes = serde_json::to_vec(record).expect("heads serialise");
        batch.insert(&self.heads, user.0.to_be_bytes(), bytes);
    }

    fn followed(&self, user: UserId) -> bool {
        self.listener().followed.contains(&user)
    }

    fn listener(&self) -> std::sync::MutexGuard<'_, Listener> {
        self.listener.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn send(&self, published: Vec<Published>) {
        let sender = self.listener().published.clone();
        if let Some(sender) = sender {
            for item in published {
                // A follower that went away hears nothing more; appends go on.
                if sender.send(item).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl Feeds for EmbeddedFeeds {
    async fn append(&self, deliveries: &[Delivery]) -> Result<(), FeedError> {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        let now = now_ms();
        let entries: usize = deliveries.iter().map(|delivery| delivery.recipients.len()).sum();
        let mut batch = OwnedWriteBatch::with_capacity(self.db.clone(), entries + 8)
            .durability(Some(PersistMode::SyncData));
        // What this append changes, applied to `state` once it is stored.
        let mut moved: HashMap<UserId, HeadRecord> = HashMap::new();
        let mut taken: HashMap<String, u64> = HashMap::new();
        let mut published = Vec::new();
        for delivery in deliveries {
            let source = source_key(&delivery.source);
            let next = delivery.source.offset + 1;
            let already = taken.get(&source).or_else(|| state.taken.get(&source));
            if already.is_some_and(|&already| already >= next) {
                continue;
            }
            let reference = (delivery.recipients.len() >= SHARED_FROM)
                .then(|| shared_reference(delivery.source.offset, &source));
            taken.insert(source, next);
            let frame = match &reference {
                Some(reference) => {
                    let key = &reference[1..];
                    let count = delivery.recipients.len() as u64;
                    batch.insert(&self.frame_refs, key, count.to_be_bytes());
                    batch.insert(&self.frames, key, delivery.frame.as_bytes());
                    reference.as_slice()
                }
                None => delivery.frame.as_bytes(),
            };
            for &user in &delivery.recipients {
                let record = match moved.entry(user) {
                    MapEntry::Occupied(occupied) => occupied.into_mut(),
                    MapEntry::Vacant(vacant) => vacant.insert(self.load(&mut state.heads, user)?),
                };
                let seq = record.push(now);
                batch.insert(&self.entries, entry_key(user, seq), entry_value(now, frame));
                if self.followed(user) {
                    let entry = Entry { seq, at: now, frame: delivery.frame.clone() };
                    published.push(Published::Entry { user, epoch: record.epoch, entry });
                }
            }
        }
        let mut released = HashMap::new();
        for (user, record) in &mut moved {
            if self.trim(*user, record, &mut batch, &mut released, now)? || record.unsaved {
                self.save_head(*user, record, &mut batch);
            }
        }
        self.release(released, &mut batch)?;
        for (source, next) in &taken {
            batch.insert(&self.taken, source.as_str(), next.to_be_bytes());
        }
        batch.commit().map_err(|e| storage("appending to feeds", e))?;
        state.heads.extend(moved);
        state.taken.extend(taken);
        self.send(published).await;
        Ok(())
    }

    async fn publish(&self, users: &[UserId], frame: &str) -> Result<(), FeedError> {
        let frame: Arc<str> = frame.into();
        let published = users
            .iter()
            .filter(|user| self.followed(**user))
            .map(|&user| Published::Passing { user, frame: frame.clone() })
            .collect();
        self.send(published).await;
        Ok(())
    }

    async fn head(&self, user: UserId) -> Result<Head, FeedError> {
        let mut state = self.state.lock().await;
        let mut record = self.load(&mut state.heads, user)?;
        if record.unsaved {
            // Fix the epoch now: a token handed out from this head must stay valid.
            let mut batch = OwnedWriteBatch::with_capacity(self.db.clone(), 1)
                .durability(Some(PersistMode::SyncData));
            self.save_head(user, &mut record, &mut batch);
            batch.commit().map_err(|e| storage("creating a feed", e))?;
            state.heads.insert(user, record);
        }
        Ok(record.head())
    }

    async fn read(&self, user: UserId, after: u64, limit: usize) -> Result<Vec<Entry>, FeedError> {
        let from = entry_key(user, after.saturating_add(1));
        let to = entry_key(user, u64::MAX);
        self.entries
            .range(from..=to)
            .take(limit)
            .map(|item| {
                let (key, value) = item.into_inner().map_err(|e| storage("reading a feed", e))?;
                self.entry(&key, &value)
            })
            .collect()
    }

    async fn follow(&self, user: UserId) -> Result<(), FeedError> {
        self.listener().followed.insert(user);
        Ok(())
    }

    async fn unfollow(&self, user: UserId) -> Result<(), FeedError> {
        self.listener().followed.remove(&user);
        Ok(())
    }

    async fn listen(&self) -> Result<mpsc::Receiver<Published>, FeedError> {
        let mut listener = self.listener();
        if listener.published.is_some() {
            return Err(FeedError::Storage("these feeds are listened to already".to_owned()));
        }
        let (sender, receiver) = mpsc::channel(PUBLISHED_CAPACITY);
        listener.published = Some(sender);
        Ok(receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::conformance;
    use std::time::Duration;
    use switchboard_schemas::{Position, Topic};

    fn feeds(dir: &tempfile::TempDir, retention: Retention) -> EmbeddedFeeds {
        EmbeddedFeeds::open(dir.path(), retention).expect("open feeds")
    }

    #[tokio::test]
    async fn conformance() -> Result<(), FeedError> {
        let dir = tempfile::tempdir().expect("temp dir");
        conformance::entries_are_numbered_per_user(&feeds(&dir, Retention::default())).await?;
        let dir = tempfile::tempdir().expect("temp dir");
        conformance::appends_skip_what_a_feed_took(&feeds(&dir, Retention::default())).await?;
        let dir = tempfile::tempdir().expect("temp dir");
        conformance::followers_hear_what_is_published(&feeds(&dir, Retention::default())).await?;
        let dir = tempfile::tempdir().expect("temp dir");
        conformance::retention_keeps_the_window_and_the_newest(&feeds(&dir, conformance::SHORT))
            .await
    }

    /// Heads are stored only when a feed is created or trimmed: reopened, a feed stands where its
    /// newest entry says, and still skips the offsets it took.
    #[tokio::test]
    async fn feeds_survive_reopening() -> Result<(), FeedError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (user, head) = {
            let feeds = feeds(&dir, Retention::default());
            conformance::append_some(&feeds).await?
        };
        let reopened = feeds(&dir, Retention::default());
        assert_eq!(reopened.head(user).await?, head);
        assert_eq!(reopened.read(user, 0, 10).await?.len() as u64, head.seq);

        let again = |offset, text: &str| Delivery {
            source: Position { topic: Topic::Messages, partition: 0, offset },
            recipients: vec![user],
            frame: text.into(),
        };
        reopened.append(&[again(2, "taken before"), again(3, "new")]).await?;
        let entries = reopened.read(user, head.seq, 10).await?;
        let frames: Vec<&str> = entries.iter().map(|entry| &*entry.frame).collect();
        assert_eq!(frames, ["new"]);
        assert_eq!(entries[0].seq, head.seq + 1);
        Ok(())
    }

    fn numbered(offset: u64, to: &[UserId]) -> Delivery {
        Delivery {
            source: Position { topic: Topic::Messages, partition: 0, offset },
            recipients: to.to_vec(),
            frame: format!(r#"{{"n":{offset}"#).into(),
        }
    }

    async fn numbers(feeds: &EmbeddedFeeds, user: UserId) -> Result<Vec<u64>, FeedError> {
        let entries = feeds.read(user, 0, 100).await?;
        Ok(entries.iter().map(|entry| entry.frame[5..].parse().expect("a number")).collect())
    }

    /// An event pushed to a group is stored once and read back from every member's feed, after
    /// reopening too; it goes once retention has trimmed it from every feed that held it, and
    /// not before.
    #[tokio::test]
    async fn a_group_event_is_stored_once_and_goes_with_its_last_entry() -> Result<(), FeedError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let group = [UserId(1), UserId(2), UserId(3)];
        {
            let feeds = feeds(&dir, conformance::SHORT);
            let events: Vec<_> = (0..5).map(|offset| numbered(offset, &group)).collect();
            feeds.append(&events).await?;
            assert_eq!(feeds.frames.iter().count(), 5, "one frame per event");
        }
        let feeds = feeds(&dir, conformance::SHORT);
        for user in group {
            assert_eq!(numbers(&feeds, user).await?, [0, 1, 2, 3, 4]);
        }

        tokio::time::sleep(conformance::SHORT.window + Duration::from_millis(500)).await;
        feeds.append(&[numbered(5, &group[..1])]).await?;
        assert_eq!(numbers(&feeds, group[0]).await?, [3, 4, 5], "trimmed to the newest three");
        assert_eq!(numbers(&feeds, group[1]).await?, [0, 1, 2, 3, 4], "the others keep theirs");
        assert_eq!(feeds.frames.iter().count(), 5);

        feeds.append(&[numbered(6, &group[1..])]).await?;
        for user in &group[1..] {
            assert_eq!(numbers(&feeds, *user).await?, [3, 4, 6]);
        }
        assert_eq!(numbers(&feeds, group[0]).await?, [3, 4, 5]);
        assert_eq!(feeds.frames.iter().count(), 2, "only the frames of 3 and 4 are left");
        assert_eq!(feeds.frame_refs.iter().count(), 2);
        Ok(())
    }
}
