//! This node's lease on its number.
//!
//! A node's number (`--node-id`) is part of every id it generates, so two nodes sharing a log must
//! never run with the same one: their ids would collide, and the projector keeps only the first
//! of two messages with one id. Each node therefore holds a lease on its number, a claim in the
//! coordination backend (which every node of a deployment shares), for as long as it runs: taken
//! before it
//! serves, renewed with its heartbeat, let go once it has stopped.
//!
//! A node stopped without letting go (killed, crashed) leaves its lease to run out. Restarted on
//! the same data directory, it takes the lease back at once: the directory names the run that
//! held it. Any other node waits for the lease to run out, and refuses to start if it does not.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::coordination::{Coordination, CoordinationError};

/// In the data directory: names the run of the node that took the lease, and is locked while the
/// node runs, so that no second node shares the directory.
const HOLDER_FILE: &str = "node-lease";

/// How much longer than a lease a node waits for another node's lease on its number to run out.
const TAKE_MARGIN: Duration = Duration::from_secs(2);

/// How often a node waiting for a lease asks again.
const TAKE_RETRY: Duration = Duration::from_secs(1);

pub struct NodeLease {
    claims: Arc<dyn Coordination>,
    key: String,
    number: u16,
    /// This run of the node: the value of the claim.
    holder: String,
    ttl: Duration,
    locked: File,
}

impl NodeLease {
    /// Takes the lease on node number `number` for `holder` (this run of the node), for `ttl` at
    /// a time. Fails when another node runs on `data_dir`, or holds the number for longer than a
    /// lease lasts. While the coordination backend cannot be reached, the node starts without the lease, says so,
    /// and takes it as soon as it can.
    pub async fn take(
        claims: Arc<dyn Coordination>,
        number: u16,
        holder: &str,
        data_dir: &Path,
        ttl: Duration,
    ) -> anyhow::Result<NodeLease> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join(HOLDER_FILE);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_err() {
            bail!(
                "another switchboard node runs on the data directory {}; give each node its own \
                 --data-dir",
                data_dir.display()
            );
        }
        let mut previous = String::new();
        file.read_to_string(&mut previous)
            .with_context(|| format!("reading {}", path.display()))?;
        let lease = NodeLease {
            claims,
            key: format!("node-id:{number}"),
            number,
            holder: holder.to_owned(),
            ttl,
            locked: file,
        };
        lease.acquire(previous.trim()).await?;
        lease.record().with_context(|| format!("writing {}", path.display()))?;
        Ok(lease)
    }

    async fn acquire(&self, previous: &str) -> anyhow::Result<()> {
        let give_up = Instant::now() + self.ttl + TAKE_MARGIN;
        let mut waiting = false;
        loop {
            let taken = match self.claims.claim(&self.key, &self.holder, self.ttl).await {
                Ok(None) => return Ok(()),
                Ok(Some(holder)) if holder == previous => {
                    self.claims.replace_claim(&self.key, &holder, &self.holder, self.ttl).await
                }
                Ok(Some(holder)) => {
                    if Instant::now() >= give_up {
                        bail!(
                            "node id {} is in use by another running node ({holder}); every node \
                             sharing a log needs its own --node-id",
                            self.number
                        );
                    }
                    if !waiting {
                        tracing::warn!(
                            node_id = self.number,
                            %holder,
                            "another node holds this node id; waiting up to {} for its lease to run out",
                            humantime::format_duration(self.ttl + TAKE_MARGIN)
                        );
                        waiting = true;
                    }
                    tokio::time::sleep(TAKE_RETRY).await;
                    continue;
                }
                Err(error) => Err(error),
            };
            match taken {
                Ok(true) => {
                    tracing::info!(node_id = self.number, "took back this node's lease on its id");
                    return Ok(());
                }
                // Taken or let go in between: look again.
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(
                        %error,
                        node_id = self.number,
                        "could not take the lease on this node's id; serving without it until it can"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// Names this run in the data directory, for the node's next start there.
    fn record(&self) -> std::io::Result<()> {
        let mut file = &self.locked;
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(self.holder.as_bytes())?;
        file.sync_all()
    }

    /// Renews the lease every third of its length until `stop`, then lets it go. Cancels `lost`
    /// and returns when another node holds the number: this node must stop generating ids.
    pub async fn keep(self, stop: CancellationToken, lost: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.renew().await {
                Ok(None) => {}
                Ok(Some(holder)) => {
                    tracing::error!(
                        node_id = self.number,
                        %holder,
                        "another node took this node's id while its lease could not be renewed; stopping"
                    );
                    lost.cancel();
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not renew the lease on this node's id");
                }
            }
        }
        self.release().await;
    }

    /// Renews the lease; the other node's name if another node holds it.
    async fn renew(&self) -> Result<Option<String>, CoordinationError> {
        if self.claims.replace_claim(&self.key, &self.holder, &self.holder, self.ttl).await? {
            return Ok(None);
        }
        // Run out (the backend was out of reach for longer than a lease), or never taken.
        match self.claims.claim(&self.key, &self.holder, self.ttl).await? {
            Some(holder) if holder != self.holder => Ok(Some(holder)),
            _ => Ok(None),
        }
    }

    /// Lets the lease go, if it is still this node's: a node with the same number can start at
    /// once. A lease that lasts a millisecond is gone by the time anyone asks.
    async fn release(&self) {
        let now = Duration::from_millis(1);
        if let Err(error) =
            self.claims.replace_claim(&self.key, &self.holder, &self.holder, now).await
        {
            tracing::debug!(%error, "could not let go of the lease on this node's id");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::memory::MemoryCoordination;

    /// The tests below run on tokio's paused clock: the time they see pass is what the code chose
    /// to wait, whatever the machine's speed.
    const TTL: Duration = Duration::from_secs(15);

    fn claims() -> Arc<dyn Coordination> {
        Arc::new(MemoryCoordination::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_number_held_by_a_live_node_is_refused_after_a_lease_and_taken_once_let_go() {
        let claims = claims();
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = NodeLease::take(claims.clone(), 5, "5-first", one.path(), TTL).await.unwrap();
        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let kept = tokio::spawn(first.keep(stop.clone(), lost.clone()));

        let started = Instant::now();
        let refused = NodeLease::take(claims.clone(), 5, "5-second", two.path(), TTL).await;
        let error = refused.err().expect("a second node with the number is refused").to_string();
        assert!(error.contains("node id 5 is in use by another running node (5-first)"), "{error}");
        assert!(started.elapsed() >= TTL, "it waited for the lease to run out first");
        assert!(!lost.is_cancelled());

        stop.cancel();
        kept.await.unwrap();
        // Let go as a lease of a millisecond, on the backend's clock, which is not paused.
        std::thread::sleep(Duration::from_millis(5));
        NodeLease::take(claims, 5, "5-second", two.path(), TTL).await.expect("let go on stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_restarted_on_its_data_directory_takes_its_lease_back_at_once() {
        let claims = claims();
        let dir = tempfile::tempdir().unwrap();
        let crashed = NodeLease::take(claims.clone(), 3, "3-before", dir.path(), TTL).await;
        drop(crashed.unwrap());

        let started = Instant::now();
        NodeLease::take(claims.clone(), 3, "3-after", dir.path(), TTL).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        let other = tempfile::tempdir().unwrap();
        let error = NodeLease::take(claims, 3, "3-other", other.path(), TTL).await.err().unwrap();
        assert!(error.to_string().contains("(3-after)"), "{error}");
    }

    #[tokio::test]
    async fn two_nodes_cannot_share_a_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _running = NodeLease::take(claims(), 1, "1-a", dir.path(), TTL).await.unwrap();
        let error = NodeLease::take(claims(), 2, "2-b", dir.path(), TTL).await.err().unwrap();
        assert!(error.to_string().contains("give each node its own --data-dir"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_whose_number_was_taken_while_it_could_not_renew_is_told_to_stop() {
        let claims = claims();
        let dir = tempfile::tempdir().unwrap();
        let lease = NodeLease::take(claims.clone(), 7, "7-late", dir.path(), TTL).await.unwrap();
        // Its lease ran out unrenewed, and another node took the number.
        claims.release_claims(&["node-id:7"]).await.unwrap();
        claims.claim("node-id:7", "7-other", TTL).await.unwrap();

        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        lease.keep(stop, lost.clone()).await;
        assert!(lost.is_cancelled());
        assert_eq!(claims.claim("node-id:7", "x", TTL).await.unwrap().as_deref(), Some("7-other"));
    }
}
