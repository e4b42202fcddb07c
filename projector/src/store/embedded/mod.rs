//! The read models in a local fjall database: the default when switchboard runs on one machine.
//!
//! - `keys` lays out one keyspace per table with order-preserving id keys;
//! - `tables` are the fjall keyspaces holding the rows of `store::rows`, as JSON;
//! - `fold` applies a batch of events by `store::rules`, atomically with the checkpoint;
//! - a [`KeyFilter`] keeps the client ids in memory, for the retry check of every send;
//! - `query` answers reads, each from one snapshot;
//! - `background` is the pair of threads that fold and commit batches, in order and at a low
//!   priority.
//!
//! fjall is synchronous and a batch ends in an fsync, so batches are applied on those threads
//! rather than on the one that polls `apply`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use fjall::{Database, Readable};
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{CallId, ConversationId, MediaId, MessageId, UserId};

use self::background::{Background, Committer, Pending};
use self::fold::{Changed, Fold};
use self::keys::Table;
use self::query::View;
use self::tables::{Tables, storage};
use crate::store::key_filter::KeyFilter;
use crate::store::{
    Call, Conversation, InboxEntry, Location, Logged, Media, Message, ReadMarker, ReadModel,
    StoreError, User,
};

mod background;
mod fold;
mod keys;
mod query;
mod tables;
#[cfg(test)]
mod tests;

/// How many events are folded into one atomic commit at most. A larger batch is committed in
/// parts, each with the checkpoint just past its events, and each part is folded while the one
/// before it is being committed: that splits a catch-up's work over two threads. Small enough
/// to split the projector's catch-up batches in sixteen, large enough that a busy conversation's
/// rows are still written once for many of its events. The projector's live batches are never
/// larger, so each of them is one commit.
const COMMIT_EVERY: usize = 2048;

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
    /// The rows of the batch applied last. Only the fold thread takes it.
    recent: Mutex<Option<Arc<Changed>>>,
}

impl Inner {
    fn view(&self) -> View<'_> {
        View::new(&self.tables, self.db.snapshot())
    }

    /// Folds `events` on the calling thread, [`COMMIT_EVERY`] at a time, and commits each part
    /// on the commit thread while the next one is folded. Returns once every part is committed,
    /// the last with `checkpoint`.
    fn apply(
        self: &Arc<Inner>,
        committer: &Committer,
        events: &[Logged],
        checkpoint: &Cursor,
    ) -> Result<(), StoreError> {
        // Taken out for the batch and put back only once all of it is committed: after a batch
        // that failed or panicked, the next one reads everything from the store.
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner).take();
        let mut reached = self.view().checkpoint()?;
        let mut committing = Committing::new(committer);
        let parts: Vec<&[Logged]> =
            if events.is_empty() { vec![&[]] } else { events.chunks(COMMIT_EVERY).collect() };
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            // This part's fold reads the store beneath `recent`, the part before it, so every
            // part before that one must be in the store by now.
            committing.wait_until(1)?;
            let mut fold = Fold::new(self.view(), recent.take(), &self.client_ids);
            for logged in part {
                fold.event(logged)?;
                // Past the part's events, but only where the batch's checkpoint goes as far.
                if checkpoint.has_passed(logged.position) {
                    reached.advance(logged.position);
                }
            }
            if i == last {
                reached = reached.furthest(checkpoint);
            }
            let changed = Arc::new(fold.finish());
            // Only the last part syncs: the journal is written in order, so its sync makes every
            // part before it durable too, and a crash before it leaves some first parts, each
            // with its own checkpoint.
            let (inner, at, sync) = (Arc::clone(self), reached.clone(), i == last);
            committing
                .start(&changed, move |rows| rows.commit(&inner.db, &inner.tables, &at, sync));
            recent = Some(changed);
        }
        committing.wait_until(0)?;
        *self.recent.lock().unwrap_or_else(PoisonError::into_inner) = recent;
        Ok(())
    }
}

/// The parts of one batch handed to the commit thread and not yet seen committed, oldest first.
///
/// A part is folded on top of the one before it, so once a part fails, the parts queued after it
/// must not be written either: they are refused. Dropping this waits for every part, so that a
/// fold that failed or panicked leaves no commit behind to race the next batch's fold.
struct Committing<'a> {
    committer: &'a Committer,
    /// With each part its rows, held until the part is seen committed, so that the last
    /// reference is dropped here: the rows are freed on the fold thread, which allocated them
    /// (mimalloc frees fastest on the allocating thread), rather than on the busier commit thread.
    parts: VecDeque<(Pending<()>, Arc<Changed>)>,
    /// Set while a part is being written and left set if it fails or panics.
    failed: Arc<AtomicBool>,
}

impl<'a> Committing<'a> {
    fn new(committer: &'a Committer) -> Committing<'a> {
        Committing { committer, parts: VecDeque::new(), failed: Arc::default() }
    }

    /// Queues `commit` of `rows` behind the parts queued before it, unless one of them has
    /// failed.
    fn start(
        &mut self,
        rows: &Arc<Changed>,
        commit: impl FnOnce(&Changed) -> Result<(), StoreError> + Send + 'static,
    ) {
        let failed = Arc::clone(&self.failed);
        let part = Arc::clone(rows);
        let pending = self.committer.start(move || {
            if failed.swap(true, Ordering::AcqRel) {
                return Err(storage("committing a batch", "an earlier part of it was not written"));
            }
            commit(&part)?;
            failed.store(false, Ordering::Release);
            Ok(())
        });
        self.parts.push_back((pending, Arc::clone(rows)));
    }

    /// Waits until at most `left` parts are still queued or being written.
    fn wait_until(&mut self, left: usize) -> Result<(), StoreError> {
        while self.parts.len() > left {
            if let Some((pending, _rows)) = self.parts.pop_front() {
                pending.wait()?;
            }
        }
        Ok(())
    }
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        for (pending, _rows) in self.parts.drain(..) {
            let _ = pending.wait();
        }
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

    async fn apply(&self, events: Vec<Logged>, checkpoint: &Cursor) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let committer = self.background.committer()?;
        let checkpoint = checkpoint.clone();
        // A batch that fails or panics part way leaves the parts before, each whole and with its
        // own checkpoint, and nothing of the rest.
        self.background.run(move || inner.apply(&committer, &events, &checkpoint)).await
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
