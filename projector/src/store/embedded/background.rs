//! The store's own threads, where batches are folded into the read models and committed,
//! scheduled to run only when no thread serving clients wants a core.
//!
//! No client waits on the read models while chatting live: an ack waits for the log, and pushes
//! are read from the log. On a busy node the projector still competes with both for the same
//! cores, and each time it wins a slice, a push waits. So these threads run under Linux's
//! `SCHED_IDLE` policy: the scheduler gives them a core only when nothing else wants one.
//!
//! Measured at 20,000 messages/s and 1,000 sockets on 2 cores (`ops/bench.sh embedded`,
//! alternating runs of one sitting), p99 send → delivered was 32 / 72 / 107 ms at nice 8,
//! 48 / 55 / 49 ms at nice 19 and 13–34 ms (six runs, median 17 ms) under `SCHED_IDLE`. A nice
//! value only weights the share: fjall's compactions, which take most of a core for seconds,
//! still took a third of it from the sockets at nice 8.
//!
//! The projector kept up all the same: the cores were not quite saturated. When they are, it
//! falls behind until they are not, and queries that carry a consistency token wait for it,
//! within their bound. Live delivery comes first on an overloaded node.
//!
//! The database is opened on the fold thread: fjall starts its flush and compaction workers
//! there, and threads inherit the scheduling policy of the thread that starts them.
//!
//! Batches are folded one at a time, in order, by the `store-fold` thread: folding reads the
//! current state, and two folds interleaving would each miss the other's writes. Committing a
//! folded batch (encoding its rows, writing them, syncing) is the other half of the work, and
//! the `store-commit` thread does it while the fold thread goes on with the next one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use fjall::Database;

use super::tables::storage;
use crate::store::StoreError;

type Job = Box<dyn FnOnce() + Send>;

pub(super) struct Background {
    folds: Option<mpsc::Sender<Job>>,
    committer: Option<Committer>,
    /// The fold thread first: its jobs hold commits of their own until they are done.
    threads: Vec<JoinHandle<()>>,
}

/// Queues work on the commit thread.
#[derive(Clone)]
pub(super) struct Committer(mpsc::Sender<Job>);

/// Work queued on the commit thread, to wait for.
pub(super) struct Pending<T>(mpsc::Receiver<Result<T, StoreError>>);

impl Background {
    /// Starts the threads and opens the database in `dir` on the fold thread.
    pub(super) fn start(dir: PathBuf) -> Result<(Background, Database), StoreError> {
        let (opened, open_result) = mpsc::channel();
        let (folds, fold_queue) = mpsc::channel::<Job>();
        let (commits, commit_queue) = mpsc::channel::<Job>();
        let fold_thread = worker("store-fold", fold_queue, move || {
            let open = switchboard_ingest::embedded_db::builder(&dir)
                .open()
                .map_err(|e| storage(format_args!("opening {}", dir.display()), e));
            opened.send(open).is_ok()
        })?;
        // Built before anything else can fail, so that dropping it stops the fold thread.
        let mut background = Background {
            folds: Some(folds),
            committer: Some(Committer(commits)),
            threads: vec![fold_thread],
        };
        background.threads.push(worker("store-commit", commit_queue, || true)?);
        let db = open_result.recv().map_err(|e| storage("opening the store", e))??;
        Ok((background, db))
    }

    /// Runs `work` on the fold thread, after every job queued before it.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.folds.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        result.await.map_err(|_| storage("read-model apply", "the fold panicked"))?
    }

    /// What queues commits, for jobs on the fold thread to hand their batches to.
    pub(super) fn committer(&self) -> Result<Committer, StoreError> {
        self.committer.clone().ok_or_else(stopped)
    }
}

impl Committer {
    /// Queues `work` on the commit thread, after every commit queued before it.
    pub(super) fn start<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Pending<T> {
        let (done, result) = mpsc::channel();
        // If the thread is gone, the job and its sender are dropped, which `wait` reports.
        let _ = self.0.send(Box::new(move || {
            let _ = done.send(work());
        }));
        Pending(result)
    }
}

impl<T> Pending<T> {
    /// Blocks until the work is done, and returns its result.
    pub(super) fn wait(self) -> Result<T, StoreError> {
        self.0.recv().map_err(|_| storage("committing a batch", "the commit failed to finish"))?
    }
}

impl Drop for Background {
    /// Finishes the queued jobs and waits for the threads, so that nothing holds the database
    /// once this returns.
    fn drop(&mut self) {
        drop(self.folds.take());
        drop(self.committer.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn stopped() -> StoreError {
    storage("read-model apply", "the store's threads have stopped")
}

/// Starts a thread named `name` that yields to clients, runs `setup` and, if it succeeds, every
/// job of `queue` in turn until the queue is closed.
fn worker(
    name: &str,
    queue: mpsc::Receiver<Job>,
    setup: impl FnOnce() -> bool + Send + 'static,
) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            yield_to_clients();
            if !setup() {
                return;
            }
            for job in queue {
                // A panicking job drops its reply, which its caller reports; the thread
                // stays for the next one.
                let _ = catch_unwind(AssertUnwindSafe(job));
            }
        })
        .map_err(|e| storage(format_args!("starting the {name} thread"), e))
}

/// Moves the calling thread to `SCHED_IDLE`, so that it runs only on a core nothing else wants.
/// Linux schedules each thread on its own; elsewhere this does nothing.
pub(super) fn yield_to_clients() {
    #[cfg(target_os = "linux")]
    {
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: a system call on the calling thread (pid 0), reading only `idle`.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "store thread keeps its priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy() -> Result<i32, StoreError> {
        // SAFETY: queries the calling thread's own policy; touches no memory.
        Ok(unsafe { libc::sched_getscheduler(0) })
    }

    #[tokio::test]
    async fn folds_and_commits_run_only_on_idle_cores() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| storage("temporary directory", e))?;
        let (background, _db) = Background::start(dir.path().to_owned())?;
        assert_eq!(background.run(policy).await?, libc::SCHED_IDLE, "the fold thread");
        let committer = background.committer()?;
        let commit_policy = background.run(move || committer.start(policy).wait()).await?;
        assert_eq!(commit_policy, libc::SCHED_IDLE, "the commit thread");
        Ok(())
    }
}
