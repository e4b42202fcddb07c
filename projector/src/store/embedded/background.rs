//! The store's own thread, where batches are folded into the read models, at a lower CPU priority
//! than the threads that serve clients.
//!
//! No client waits on the read models while chatting live: an ack waits for the log, and pushes
//! are read from the log. On a busy node the projector still competes with both for the same
//! cores, and each time it wins a slice, a push waits. Run at [`NICE`], it yields to them: at
//! 20,000 messages/s on 2 cores, p99 send → delivered fell from 67–120 ms (5 runs) to 50–52 ms
//! (3 runs), and the projector kept up, since the cores were not quite saturated. When they are,
//! it catches up in the gaps, and queries that carry a consistency token wait for it.
//!
//! The database is opened on this thread too: fjall starts its flush and compaction workers
//! there, and threads inherit the priority of the thread that starts them.
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

/// The nice value of the thread: 0 is the default, 19 the lowest priority. At 8 it gets about
/// a sixth of a core's time while a default thread wants the core.
const NICE: i32 = 8;

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
                lower_priority();
                let open = Database::builder(&dir)
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

/// Lowers the calling thread's priority to [`NICE`]. Linux keeps a nice value per thread; elsewhere
/// `setpriority` would lower the whole process, so this does nothing there.
pub(super) fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on this thread's own id; they touch no memory.
        let result =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE) };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "store thread keeps its priority");
        }
    }
}
