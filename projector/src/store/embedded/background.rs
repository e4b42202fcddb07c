//! The store's own thread, where batches are folded into the read models, scheduled to run only
//! when no thread serving clients wants a core.
//!
//! No client waits on the read models while chatting live: an ack waits for the log, and pushes
//! are read from the log. On a busy node the projector still competes with both for the same
//! cores, and each time it wins a slice, a push waits. So this thread runs under Linux's
//! `SCHED_IDLE` policy: the scheduler gives it a core only when nothing else wants one.
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
//! The database is opened on this thread too: fjall starts its flush and compaction workers
//! there, and threads inherit the scheduling policy of the thread that starts them.
//!
//! Batches are applied one at a time, in order, by this one thread: folding reads the current
//! state, and two folds interleaving would each miss the other's writes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use fjall::Database;

use super::tables::storage;
use crate::store::StoreError;

type Job = Box<dyn FnOnce() + Send>;

pub(super) struct Background {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the thread and opens the database in `dir` on it.
    pub(super) fn start(dir: PathBuf) -> Result<(Background, Database), StoreError> {
        let (opened, open_result) = mpsc::channel();
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("store-apply".into())
            .spawn(move || {
                yield_to_clients();
                let open = switchboard_ingest::embedded_db::builder(&dir)
                    .open()
                    .map_err(|e| storage(format_args!("opening {}", dir.display()), e));
                if opened.send(open).is_err() {
                    return;
                }
                for job in queue {
                    // A panicking job drops its reply, which its caller reports; the thread
                    // stays for the next one.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            })
            .map_err(|e| storage("starting the store thread", e))?;
        let background = Background { jobs: Some(jobs), thread: Some(thread) };
        let db = open_result.recv().map_err(|e| storage("opening the store", e))??;
        Ok((background, db))
    }

    /// Runs `work` on the thread, after every job queued before it.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        let stopped = || storage("read-model apply", "the store thread has stopped");
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        result.await.map_err(|_| storage("read-model apply", "the fold panicked"))?
    }
}

impl Drop for Background {
    /// Finishes the queued jobs and waits for the thread, so that nothing holds the database
    /// once this returns.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
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

    #[tokio::test]
    async fn folds_run_only_on_idle_cores() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| storage("temporary directory", e))?;
        let (background, _db) = Background::start(dir.path().to_owned())?;
        // SAFETY: queries the calling thread's own policy; touches no memory.
        let policy = background.run(|| Ok(unsafe { libc::sched_getscheduler(0) })).await?;
        assert_eq!(policy, libc::SCHED_IDLE, "the store thread");
        Ok(())
    }
}
