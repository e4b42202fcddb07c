//! A thread of its own for a stage every event passes through once: projecting, and routing and
//! pushing deliveries.
//!
//! On the node's shared runtime such a stage is one task among thousands of sockets. Each time
//! it waits (for the log, the feeds, the store) it goes back to the end of the queue and runs
//! again only after every busy socket has had its turn, so the more clients send, the less often
//! it runs. Past a node's capacity that starved delivery: offered 40,000 messages/s, one node on
//! two cores delivered 1,600–13,000 a second. On a thread of its own the stage gets its share of
//! the cores from the operating system, however many sockets there are, and the same node
//! delivered 25,000–37,000 (README, "Past capacity").

use std::thread::JoinHandle;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A single-threaded runtime on a named thread, running until [`LaneThread::stop`].
pub struct LaneThread {
    handle: Handle,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl LaneThread {
    pub fn start(name: &str) -> anyhow::Result<LaneThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("starting the runtime of thread `{name}`"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Runs the tasks spawned on `handle` until told to stop; those still running
                // then are dropped with the runtime.
                let _ = runtime.block_on(stopped);
            })
            .with_context(|| format!("starting thread `{name}`"))?;
        Ok(LaneThread { handle, stop, thread })
    }

    /// Where to spawn the tasks this thread runs.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the thread once its tasks are done or no longer wanted.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let name = thread.thread().name().unwrap_or_default().to_owned();
        if !matches!(tokio::task::spawn_blocking(move || thread.join()).await, Ok(Ok(()))) {
            tracing::warn!(thread = name, "a stage thread ended in a panic");
        }
    }
}
