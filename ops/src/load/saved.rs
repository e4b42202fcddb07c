//! Accounts saved between runs: `--scenario register` writes the users and conversations it set
//! up to `--accounts FILE`, and a later run given the same file uses them instead of
//! registering its own.
//!
//! This is how a run measures a server that has registered no one since it started.
//! Registration hashes passwords with argon2, 19 MiB of memory per hash on the server, and the
//! allocator may keep what it freed; on a server restarted after the registrations, its memory
//! grows by what the sockets cost and nothing else (`ops/bench.sh idle` does that).
//!
//! Access tokens outlive the restart when the node keeps its signing secret (in its data
//! directory, by default), but they do expire (24 h by default): tokens that would expire
//! before the run is under way are renewed by logging in again.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};

use super::pacing::share;
use super::setup::{self, Account, Api, Conversation, Progress};

/// Tokens expiring sooner than this are renewed: opening the sockets of a large run takes
/// minutes, and a token is checked when its socket opens.
const RENEW_WITHIN: Duration = Duration::from_secs(30 * 60);

/// The users of a run and their conversations, as `--accounts FILE` holds them.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub group_size: usize,
    pub accounts: Vec<Account>,
    /// In the order [`setup::groups`] gives them: together they cover the accounts in order.
    pub conversations: Vec<Conversation>,
}

impl Saved {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string(self).context("encoding the accounts")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("saving the accounts to {}", path.display()))
    }

    /// Reads the accounts saved in `path`, which must be what a run of `connections`
    /// connections in conversations of `group_size` needs.
    pub fn read(path: &Path, connections: usize, group_size: usize) -> anyhow::Result<Saved> {
        let read = || -> anyhow::Result<Saved> {
            let text = std::fs::read_to_string(path)?;
            let saved: Saved = serde_json::from_str(&text)?;
            saved.fits(connections, group_size)?;
            Ok(saved)
        };
        read().with_context(|| format!("reading the saved accounts in {}", path.display()))
    }

    fn fits(&self, connections: usize, group_size: usize) -> anyhow::Result<()> {
        ensure!(
            self.accounts.len() == connections && self.group_size == group_size,
            "it holds {} accounts in conversations of {}; run with --connections {} \
             --group-size {}",
            self.accounts.len(),
            self.group_size,
            self.accounts.len(),
            self.group_size
        );
        let members = self.conversations.iter().map(|conversation| conversation.members.clone());
        ensure!(
            members.eq(setup::groups(connections, group_size)),
            "its conversations do not cover its accounts in order"
        );
        Ok(())
    }

    /// What process `worker` of `processes` takes: whole conversations, as evenly as they
    /// divide, with their members counted from its first account.
    pub fn part(mut self, processes: usize, worker: usize) -> (Vec<Account>, Vec<Conversation>) {
        let count = self.conversations.len();
        let first: usize = (0..worker).map(|before| share(count, processes, before)).sum();
        let mut conversations: Vec<Conversation> =
            self.conversations.drain(first..first + share(count, processes, worker)).collect();
        let start = conversations.first().map_or(0, |first| first.members.start);
        let end = conversations.last().map_or(start, |last| last.members.end);
        for conversation in &mut conversations {
            let members = &mut conversation.members;
            *members = members.start - start..members.end - start;
        }
        (self.accounts.drain(start..end).collect(), conversations)
    }
}

/// Logs in again, `concurrency` at a time, every account whose token expires within
/// [`RENEW_WITHIN`].
pub async fn renew_expiring(
    api: &Api,
    accounts: &mut [Account],
    concurrency: usize,
    label: &str,
) -> anyhow::Result<()> {
    let expiring = expiring(accounts, now_ms() + RENEW_WITHIN.as_millis() as i64);
    if expiring.is_empty() {
        return Ok(());
    }
    let mut progress = Progress::new(format!("{label}renewing expiring tokens"), expiring.len());
    let renewed: Vec<(usize, Account)> = stream::iter(expiring)
        .map(|index| {
            let handle = &accounts[index].handle;
            async move { anyhow::Ok((index, api.login(handle).await?)) }
        })
        .buffer_unordered(concurrency)
        .inspect_ok(|_| progress.advance())
        .try_collect()
        .await?;
    for (index, account) in renewed {
        accounts[index] = account;
    }
    Ok(())
}

/// The indexes of the accounts whose token expires before `deadline_ms`.
fn expiring(accounts: &[Account], deadline_ms: i64) -> Vec<usize> {
    (0..accounts.len()).filter(|&index| accounts[index].expires_at < deadline_ms).collect()
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    since_epoch.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(n: usize) -> Account {
        Account {
            id: format!("{}", 1000 + n),
            handle: format!("ld_{n}"),
            token: format!("eyJ.{n}.sig"),
            expires_at: 1_700_000_000_000 + n as i64,
        }
    }

    /// `count` accounts in conversations of `size`, as `--scenario register` saves them.
    fn saved(count: usize, size: usize) -> Saved {
        let conversations = setup::groups(count, size)
            .into_iter()
            .enumerate()
            .map(|(n, members)| Conversation { id: format!("c{n}"), members })
            .collect();
        Saved { group_size: size, accounts: (0..count).map(account).collect(), conversations }
    }

    #[test]
    fn saved_accounts_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.json");
        saved(7, 3).write(&path).unwrap();
        assert_eq!(Saved::read(&path, 7, 3).unwrap(), saved(7, 3));
    }

    #[test]
    fn saved_accounts_must_fit_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.json");
        let refused =
            |connections, size| format!("{:#}", Saved::read(&path, connections, size).unwrap_err());
        assert!(refused(6, 2).contains("No such file"), "{}", refused(6, 2));
        saved(6, 2).write(&path).unwrap();
        assert!(refused(8, 2).contains("run with --connections 6 --group-size 2"));
        assert!(refused(6, 3).contains("run with --connections 6 --group-size 2"));
        let mut shuffled = saved(6, 2);
        shuffled.conversations.swap(0, 1);
        shuffled.write(&path).unwrap();
        assert!(refused(6, 2).contains("do not cover its accounts in order"));
        std::fs::write(&path, "{}").unwrap();
        assert!(refused(6, 2).contains(&path.display().to_string()));
    }

    #[test]
    fn processes_take_whole_conversations() {
        let ids = |accounts: &[Account]| accounts.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        // Conversations of 0..3, 3..6, 6..10 over two processes.
        let (accounts, conversations) = saved(10, 3).part(2, 0);
        assert_eq!(ids(&accounts), ids(&(0..6).map(account).collect::<Vec<_>>()));
        assert_eq!(
            conversations.iter().map(|c| c.members.clone()).collect::<Vec<_>>(),
            [0..3, 3..6]
        );
        let (accounts, conversations) = saved(10, 3).part(2, 1);
        assert_eq!(ids(&accounts), ids(&(6..10).map(account).collect::<Vec<_>>()));
        assert_eq!(conversations, [Conversation { id: "c2".into(), members: 0..4 }]);
        let (accounts, conversations) = saved(10, 3).part(1, 0);
        assert_eq!((accounts.len(), conversations), (10, saved(10, 3).conversations));
    }

    #[test]
    fn tokens_expiring_before_the_deadline_are_renewed() {
        let accounts: Vec<Account> = (0..4).map(account).collect();
        assert_eq!(expiring(&accounts, 1_700_000_000_002), [0, 1]);
        assert_eq!(expiring(&accounts, 0), Vec::<usize>::new());
        assert!(now_ms() > 1_700_000_000_000);
    }
}
