//! The read models in a local fjall database: the default when switchboard runs on one machine.
//!
//! - `keys` lays out one keyspace per table with order-preserving id keys;
//! - `tables` are the fjall keyspaces holding the rows of `store::rows`, as JSON;
//! - `fold` applies a batch of events by `store::rules`, atomically with the checkpoint;
//! - `filter` keeps the client ids in memory, for the retry check of every send;
//! - `query` answers reads, each from one snapshot;
//! - `background` is the thread that applies batches, one at a time and at a low priority.
//!
//! fjall is synchronous and a batch ends in an fsync, so batches are applied on that thread
//! rather than on the one that polls `apply`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use fjall::{Database, Readable};
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{CallId, ConversationId, MediaId, MessageId, UserId};

use self::background::Background;
use self::filter::KeyFilter;
use self::fold::{Fold, Recent};
use self::keys::Table;
use self::query::View;
use self::tables::{Tables, storage};
use crate::store::{
    Call, Conversation, InboxEntry, Location, Logged, Media, Message, ReadMarker, ReadModel,
    StoreError, User,
};

mod background;
mod filter;
mod fold;
mod keys;
mod query;
mod tables;
#[cfg(test)]
mod tests;

/// The read models kept in a directory on local disk. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// Loads the client ids stored before this open into [`Inner::client_ids`].
    loader: Option<JoinHandle<()>>,
    background: Background,
}

struct Inner {
    db: Database,
    tables: Tables,
    /// Every key of [`Table::ClientIds`]: the retry check of every send is nearly always a miss.
    client_ids: KeyFilter,
    /// Tells the loader to stop: the store is being dropped.
    closing: AtomicBool,
    /// The rows of the batch applied last. Only the store thread takes it.
    recent: Mutex<Recent>,
}

impl Inner {
    fn view(&self) -> View<'_> {
        View::new(&self.tables, self.db.snapshot())
    }
}

impl EmbeddedStore {
    /// Opens the store in `dir`, creating it if needed and recovering whatever the journal holds
    /// after a crash.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let (background, db) = Background::start(dir.to_owned())?;
        let tables = Tables::open(&db)?;
        let expected = tables.get(Table::ClientIds).approximate_len() * 2;
        let inner = Arc::new(Inner {
            db,
            tables,
            client_ids: KeyFilter::new(expected),
            closing: AtomicBool::new(false),
            recent: Mutex::default(),
        });
        // In the background: a large store holds millions of client ids, and reading them all
        // (about a million a second) would hold up the start. Batches applied meanwhile insert
        // theirs themselves; the filter answers "maybe" until the loader is done.
        let loader = std::thread::Builder::new()
            .name("client-id-filter".into())
            .spawn({
                let inner = Arc::clone(&inner);
                move || {
                    background::yield_to_clients();
                    if let Err(error) = load_client_ids(&inner) {
                        tracing::error!(%error, "client ids not loaded; every send checks the store");
                    }
                }
            })
            .map_err(|e| storage("starting the client id loader", e))?;
        Ok(EmbeddedStore { inner, loader: Some(loader), background })
    }

    /// Runs `query` against a fresh snapshot, on the calling task. Queries are point lookups and
    /// short scans that the memtables and block cache answer in microseconds; handing each to the
    /// blocking pool cost more in thread wake-ups than the query itself (a third of the CPU time
    /// under load, measured with `perf`), so only writes, which sync to disk, go there.
    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        F: FnOnce(&View<'_>) -> Result<T, StoreError>,
    {
        query(&self.inner.view())
    }
}

/// Inserts every client id stored before the filter existed, then marks the filter loaded. The
/// snapshot is taken after the filter exists, so a key is either in it or was inserted by the
/// batch that stored it.
fn load_client_ids(inner: &Inner) -> Result<(), StoreError> {
    let snapshot = inner.db.snapshot();
    for (i, entry) in snapshot.iter(inner.tables.get(Table::ClientIds)).enumerate() {
        if i % 4096 == 0 && inner.closing.load(Ordering::Relaxed) {
            return Ok(());
        }
        let key = entry.key().map_err(|e| storage("loading client ids", e))?;
        inner.client_ids.insert(&key);
    }
    inner.client_ids.loaded();
    Ok(())
}

impl Drop for EmbeddedStore {
    /// Waits for the loader (and, as the fields drop, for the store thread), so that the
    /// directory is free to open again once this returns.
    fn drop(&mut self) {
        self.inner.closing.store(true, Ordering::Relaxed);
        if let Some(loader) = self.loader.take() {
            let _ = loader.join();
        }
    }
}

#[async_trait]
impl ReadModel for EmbeddedStore {
    async fn checkpoint(&self) -> Result<Cursor, StoreError> {
        self.read(|view| view.checkpoint()).await
    }

    async fn apply(&self, events: &[Logged], checkpoint: &Cursor) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let events = events.to_vec();
        let checkpoint = checkpoint.clone();
        // A fold that panicked left nothing half-written: nothing is written before the commit.
        self.background
            .run(move || {
                let checkpoint = inner.view().checkpoint()?.furthest(&checkpoint);
                // Taken out for the batch and put back only once it is committed: after a batch
                // that failed or panicked, the next one reads everything from the store.
                let recent = std::mem::take(
                    &mut *inner.recent.lock().unwrap_or_else(PoisonError::into_inner),
                );
                let mut fold = Fold::new(inner.view(), recent, &inner.client_ids);
                for logged in &events {
                    fold.event(logged)?;
                }
                *inner.recent.lock().unwrap_or_else(PoisonError::into_inner) =
                    fold.commit(&inner.db, &inner.tables, &checkpoint)?;
                Ok(())
            })
            .await
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(move |view| view.user(id)).await
    }

    async fn user_by_handle(&self, handle: &str) -> Result<Option<User>, StoreError> {
        let handle = handle.to_owned();
        self.read(move |view| view.user_by_handle(&handle)).await
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        self.read(move |view| view.conversation(id)).await
    }

    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        self.read(move |view| view.is_member(conversation, user)).await
    }

    async fn direct_conversation(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<Option<ConversationId>, StoreError> {
        self.read(move |view| view.direct_conversation(a, b)).await
    }

    async fn inbox(&self, user: UserId) -> Result<Vec<InboxEntry>, StoreError> {
        self.read(move |view| view.inbox(user)).await
    }

    async fn messages(
        &self,
        conversation: ConversationId,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read(move |view| view.messages(conversation, before, limit)).await
    }

    async fn message(
        &self,
        conversation: ConversationId,
        id: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        self.read(move |view| view.message(conversation, id)).await
    }

    async fn message_by_client_id(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>, StoreError> {
        if !self.inner.client_ids.may_contain(&keys::client_id(
            conversation.0,
            sender.0,
            client_msg_id,
        )) {
            return Ok(None);
        }
        let client_msg_id = client_msg_id.to_owned();
        self.read(move |view| view.message_by_client_id(conversation, sender, &client_msg_id)).await
    }

    async fn read_markers(
        &self,
        conversation: ConversationId,
    ) -> Result<Vec<ReadMarker>, StoreError> {
        self.read(move |view| view.read_markers(conversation)).await
    }

    async fn location(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Location>, StoreError> {
        self.read(move |view| view.location(conversation, user)).await
    }

    async fn locations(&self, conversation: ConversationId) -> Result<Vec<Location>, StoreError> {
        self.read(move |view| view.locations(conversation)).await
    }

    async fn media(&self, id: MediaId) -> Result<Option<Media>, StoreError> {
        self.read(move |view| view.media(id)).await
    }

    async fn last_seen(&self, user: UserId) -> Result<Option<i64>, StoreError> {
        self.read(move |view| view.last_seen(user)).await
    }

    async fn call(&self, id: CallId) -> Result<Option<Call>, StoreError> {
        self.read(move |view| view.call(id)).await
    }

    async fn call_history(
        &self,
        user: UserId,
        before: Option<CallId>,
        limit: usize,
    ) -> Result<Vec<Call>, StoreError> {
        self.read(move |view| view.call_history(user, before, limit)).await
    }

    async fn live_calls(&self, user: UserId) -> Result<Vec<Call>, StoreError> {
        self.read(move |view| view.live_calls(user)).await
    }

    async fn live_rooms(&self, conversation: ConversationId) -> Result<Vec<Call>, StoreError> {
        self.read(move |view| view.live_rooms(conversation)).await
    }

    async fn dump(&self) -> Result<String, StoreError> {
        self.read(|view| view.dump()).await
    }
}
