//! Feeds in a local fjall database, for a switchboard that runs as one process.
//!
//! Two keyspaces: `entries`, keyed by user and number (both big-endian, so a user's entries are
//! one ordered range), holding the append time and the frame; and `heads`, one record per user
//! with the epoch, the numbers kept and the next offset taken from each source partition. The
//! heads of the users seen since the start are also kept in memory. An append writes its entries
//! and the heads it moved as one atomic batch, so after a crash a feed holds an append whole or
//! not at all, and the stage, resuming from before it, fills in exactly what is missing.
//!
//! Every append is synced to disk before it returns. A feed is derived from the log, but the
//! delivery stage moves past what it appended as soon as the append returns: an entry lost
//! afterwards (in a crash or a power cut) would be lost for good, and its number handed to the
//! next entry, under tokens clients already hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
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
    heads: Keyspace,
    retention: Retention,
    /// Heads by user, loaded on first use. Held across an append and its publishing, so that
    /// entries are published in the order they were numbered.
    state: tokio::sync::Mutex<HashMap<UserId, HeadRecord>>,
    listener: Mutex<Listener>,
}

#[derive(Default)]
struct Listener {
    published: Option<mpsc::Sender<Published>>,
    followed: HashSet<UserId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct HeadRecord {
    epoch: u64,
    seq: u64,
    at: i64,
    first: u64,
    /// When the entry numbered `first` was appended.
    first_at: i64,
    /// Per source partition (`messages.3`), the next offset this feed takes.
    sources: BTreeMap<String, u64>,
}

impl HeadRecord {
    fn new() -> HeadRecord {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_micros() as u64);
        HeadRecord { epoch, seq: 0, at: 0, first: 1, first_at: 0, sources: BTreeMap::new() }
    }

    fn head(&self) -> Head {
        Head { epoch: self.epoch, seq: self.seq, at: self.at, first: self.first }
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

fn entry_value(at: i64, frame: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + frame.len());
    value.extend_from_slice(&at.to_be_bytes());
    value.extend_from_slice(frame.as_bytes());
    value
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, FeedError> {
    let corrupt = || FeedError::Storage("a corrupt feed entry".to_owned());
    let seq = u64::from_be_bytes(key.get(8..16).ok_or_else(corrupt)?.try_into().expect("8 bytes"));
    let at = i64::from_be_bytes(value.get(..8).ok_or_else(corrupt)?.try_into().expect("8 bytes"));
    let frame = std::str::from_utf8(&value[8..]).map_err(|_| corrupt())?;
    Ok(Entry { seq, at, frame: frame.into() })
}

impl EmbeddedFeeds {
    /// Opens the feeds in `dir`, creating them if needed.
    pub fn open(dir: &Path, retention: Retention) -> Result<EmbeddedFeeds, FeedError> {
        let db = Database::builder(dir)
            .open()
            .map_err(|e| storage(&format!("opening {}", dir.display()), e))?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| storage(&format!("opening keyspace `{name}`"), e))
        };
        Ok(EmbeddedFeeds {
            entries: keyspace("entries")?,
            heads: keyspace("heads")?,
            db,
            retention,
            state: tokio::sync::Mutex::default(),
            listener: Mutex::default(),
        })
    }

    fn load<'a>(
        &self,
        state: &'a mut HashMap<UserId, HeadRecord>,
        user: UserId,
    ) -> Result<&'a mut HeadRecord, FeedError> {
        if let std::collections::hash_map::Entry::Vacant(vacant) = state.entry(user) {
            let stored =
                self.heads.get(user.0.to_be_bytes()).map_err(|e| storage("reading a head", e))?;
            let record = match stored {
                Some(bytes) => {
                    serde_json::from_slice(&bytes).map_err(|e| storage("a corrupt head", e))?
                }
                None => HeadRecord::new(),
            };
            vacant.insert(record);
        }
        Ok(state.get_mut(&user).expect("just inserted"))
    }

    /// Drops the entries of `record`'s feed that retention no longer keeps, adding the removals
    /// to `batch`.
    fn trim(
        &self,
        user: UserId,
        record: &mut HeadRecord,
        batch: &mut OwnedWriteBatch,
        now: i64,
    ) -> Result<(), FeedError> {
        let Retention { window, min_events } = self.retention;
        let cutoff = now - window.as_millis() as i64;
        let kept_from = record.seq.saturating_sub(min_events) + 1;
        if record.first >= kept_from || record.first_at >= cutoff {
            return Ok(());
        }
        for item in
            self.entries.range(entry_key(user, record.first)..entry_key(user, record.seq + 1))
        {
            let (key, value) = item.into_inner().map_err(|e| storage("trimming a feed", e))?;
            let entry = decode_entry(&key, &value)?;
            if entry.seq >= kept_from || entry.at >= cutoff {
                record.first = entry.seq;
                record.first_at = entry.at;
                return Ok(());
            }
            batch.remove(&self.entries, key);
        }
        record.first = record.seq + 1;
        Ok(())
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
        let now = now_ms();
        let mut batch = OwnedWriteBatch::with_capacity(self.db.clone(), deliveries.len() * 2)
            .durability(Some(PersistMode::SyncData));
        let mut moved: HashMap<UserId, HeadRecord> = HashMap::new();
        let mut published = Vec::new();
        for delivery in deliveries {
            let source = source_key(&delivery.source);
            let next = delivery.source.offset + 1;
            for &user in &delivery.recipients {
                let record = match moved.get_mut(&user) {
                    Some(record) => record,
                    None => {
                        let loaded = self.load(&mut state, user)?.clone();
                        moved.entry(user).or_insert(loaded)
                    }
                };
                if record.sources.get(&source).is_some_and(|&taken| taken >= next) {
                    continue;
                }
                record.sources.insert(source.clone(), next);
                record.seq += 1;
                record.at = now;
                if record.first > record.seq - 1 {
                    record.first_at = now;
                }
                batch.insert(
                    &self.entries,
                    entry_key(user, record.seq),
                    entry_value(now, &delivery.frame),
                );
                if self.followed(user) {
                    let entry = Entry { seq: record.seq, at: now, frame: delivery.frame.clone() };
                    published.push(Published::Entry { user, epoch: record.epoch, entry });
                }
            }
        }
        for (user, record) in &mut moved {
            self.trim(*user, record, &mut batch, now)?;
            let bytes = serde_json::to_vec(record).expect("heads serialise");
            batch.insert(&self.heads, user.0.to_be_bytes(), bytes);
        }
        batch.commit().map_err(|e| storage("appending to feeds", e))?;
        state.extend(moved);
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
        let record = self.load(&mut state, user)?;
        if record.seq == 0
            && self
                .heads
                .get(user.0.to_be_bytes())
                .map_err(|e| storage("reading a head", e))?
                .is_none()
        {
            // Fix the epoch now: a token handed out from this head must stay valid.
            let bytes = serde_json::to_vec(&*record).expect("heads serialise");
            self.heads
                .insert(user.0.to_be_bytes(), bytes)
                .map_err(|e| storage("creating a feed", e))?;
            self.db.persist(PersistMode::SyncData).map_err(|e| storage("creating a feed", e))?;
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
                decode_entry(&key, &value)
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
        Ok(())
    }
}
