//! The unmeasured part of a run, over HTTP: accounts, conversations, and the server's memory;
//! also the HTTP the reconnect scenario needs (messages sent while the sockets are away, the
//! server's metrics).
//!
//! Registration hashes a password with argon2 on the server, which takes tens of milliseconds
//! of CPU each; it is done with modest concurrency so that the server stays responsive, and
//! with progress lines, since a thousand accounts take a while.

use std::ops::Range;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::metrics::{RESIDENT_MEMORY, Scrape};

/// Every load account has this password; the server wants at least 8 characters.
const PASSWORD: &str = "load-generator";

/// A registered user and its access token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub handle: String,
    pub token: String,
    /// When the token expires, in milliseconds since the Unix epoch.
    pub expires_at: i64,
}

/// A conversation and the accounts in it, as a range of indexes into the accounts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub members: Range<usize>,
}

/// The node's HTTP API.
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// The answer to a registration or a login.
#[derive(Deserialize)]
struct Session {
    user: IdOnly,
    token: String,
    expires_at: i64,
}

impl Session {
    fn account(self, handle: &str) -> Account {
        Account {
            id: self.user.id,
            handle: handle.to_owned(),
            token: self.token,
            expires_at: self.expires_at,
        }
    }
}

#[derive(Deserialize)]
struct Created {
    conversation: IdOnly,
}

#[derive(Deserialize)]
struct Sent {
    message_id: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: ErrorCode,
}

#[derive(Deserialize)]
struct ErrorCode {
    code: String,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        Ok(Api { http, base: base.trim_end_matches('/').to_owned() })
    }

    /// Registers `handle` and returns the new account.
    pub async fn register(&self, handle: &str) -> anyhow::Result<Account> {
        let body = json!({ "handle": handle, "password": PASSWORD });
        let registered: Session = self
            .post("/v1/auth/register", None, body)
            .await
            .with_context(|| format!("registering `{handle}`"))?;
        Ok(registered.account(handle))
    }

    /// Logs `handle` in again: the same account with a new token.
    pub async fn login(&self, handle: &str) -> anyhow::Result<Account> {
        let body = json!({ "handle": handle, "password": PASSWORD });
        let session: Session = self
            .post("/v1/auth/login", None, body)
            .await
            .with_context(|| format!("logging `{handle}` in"))?;
        Ok(session.account(handle))
    }

    /// Creates a conversation of `owner` with `others`: a direct one when there is one other,
    /// a group otherwise. Returns its id.
    pub async fn create_conversation(
        &self,
        owner: &Account,
        others: &[Account],
    ) -> anyhow::Result<String> {
        let body = match others {
            [other] => json!({ "kind": "direct", "user_id": other.id }),
            _ => {
                let members: Vec<&str> = others.iter().map(|a| a.id.as_str()).collect();
                json!({ "kind": "group", "title": "load test", "members": members })
            }
        };
        let created: Created = self
            .post("/v1/conversations", Some(&owner.token), body)
            .await
            .with_context(|| format!("creating a conversation for user {}", owner.id))?;
        Ok(created.conversation.id)
    }

    /// The server's resident memory, from its Prometheus metrics.
    pub async fn resident_memory(&self) -> anyhow::Result<u64> {
        let text = self.metrics_text().await?;
        resident_memory(&text)
            .with_context(|| format!("{}/metrics has no {RESIDENT_MEMORY} sample", self.base))
    }

    /// The server's Prometheus metrics.
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(&self.metrics_text().await?))
    }

    async fn metrics_text(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.base);
        async {
            let response = self.http.get(&url).send().await?.error_for_status()?;
            response.text().await
        }
        .await
        .with_context(|| format!("reading {url}"))
    }

    /// Sends a message as `sender` over HTTP; the new message's id, or why not, in a few words
    /// that are the same for every failure of one kind (they are counted by it).
    pub async fn send_message(
        &self,
        sender: &Account,
        conversation_id: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Result<String, String> {
        let url = format!("{}/v1/conversations/{conversation_id}/messages", self.base);
        let body = json!({ "client_msg_id": client_msg_id, "body": body });
        let request = self.http.post(url).bearer_auth(&sender.token).json(&body);
        let response = request.send().await.map_err(|error| transport_failure(&error))?;
        let status = response.status();
        let text = response.text().await.map_err(|error| transport_failure(&error))?;
        if !status.is_success() {
            let code = serde_json::from_str::<ErrorAnswer>(&text)
                .map_or_else(|_| "no error code".to_owned(), |answer| answer.error.code);
            return Err(format!("{status} {code}"));
        }
        serde_json::from_str::<Sent>(&text)
            .map(|sent| sent.message_id)
            .map_err(|_| format!("{status} with unexpected JSON"))
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> anyhow::Result<T> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let text =
            response.text().await.with_context(|| format!("reading the answer to POST {path}"))?;
        if !status.is_success() {
            bail!("POST {path} answered {status}: {text}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("POST {path} answered with unexpected JSON: {text}"))
    }
}

/// Finds the unlabelled `process_resident_memory_bytes` sample in Prometheus text.
pub fn resident_memory(metrics: &str) -> Option<u64> {
    Scrape::parse(metrics).value(RESIDENT_MEMORY).map(|bytes| bytes as u64)
}

/// A request that got no answer, by the kind of failure.
fn transport_failure(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    format!("no answer ({kind})")
}

/// Splits `count` accounts into conversations of `size` members, in order. A last group too
/// small to be a conversation (one member) joins the group before it.
pub fn groups(count: usize, size: usize) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> =
        (0..count).step_by(size).map(|start| start..(start + size).min(count)).collect();
    if groups.len() > 1 && groups.last().is_some_and(|last| last.len() < 2) {
        let last = groups.pop().expect("checked above");
        groups.last_mut().expect("more than one group").end = last.end;
    }
    groups
}

/// Prints how far a long setup step has got, every tenth of the way.
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    started: Instant,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Progress {
        Progress { label: label.into(), total, done: 0, started: Instant::now() }
    }

    pub fn advance(&mut self) {
        self.done += 1;
        if self.done.is_multiple_of(self.total.div_ceil(10).max(1)) || self.done == self.total {
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            eprintln!("{}: {}/{} ({rate:.0}/s)", self.label, self.done, self.total);
        }
    }
}

/// Registers `count` accounts named `<prefix>_<n>`, `concurrency` at a time.
pub async fn register_all(
    api: &Api,
    prefix: &str,
    count: usize,
    concurrency: usize,
    label: &str,
) -> anyhow::Result<Vec<Account>> {
    let mut progress = Progress::new(format!("{label}registering users"), count);
    let mut accounts: Vec<(usize, Account)> = stream::iter(0..count)
        .map(|n| async move {
            let account = api.register(&format!("{prefix}_{n}")).await?;
            anyhow::Ok((n, account))
        })
        .buffer_unordered(concurrency)
        .inspect_ok(|_| progress.advance())
        .try_collect()
        .await?;
    accounts.sort_unstable_by_key(|(n, _)| *n);
    Ok(accounts.into_iter().map(|(_, account)| account).collect())
}

/// Puts the accounts into conversations of `size` members (see [`groups`]), created by each
/// group's first member, `concurrency` at a time.
pub async fn create_conversations(
    api: &Api,
    accounts: &[Account],
    size: usize,
    concurrency: usize,
    label: &str,
) -> anyhow::Result<Vec<Conversation>> {
    let groups = groups(accounts.len(), size);
    let mut progress = Progress::new(format!("{label}creating conversations"), groups.len());
    stream::iter(groups)
        .map(|members| async move {
            let (owner, others) =
                accounts[members.clone()].split_first().expect("groups have at least two members");
            let id = api.create_conversation(owner, others).await?;
            anyhow::Ok(Conversation { id, members })
        })
        .buffered(concurrency)
        .inspect_ok(|_| progress.advance())
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_split_into_conversations_of_the_asked_size() {
        assert_eq!(groups(6, 2), vec![0..2, 2..4, 4..6]);
        assert_eq!(groups(7, 3), vec![0..3, 3..7]);
        assert_eq!(groups(8, 3), vec![0..3, 3..6, 6..8]);
        assert_eq!(groups(5, 2), vec![0..2, 2..5]);
        assert_eq!(groups(4, 10), vec![0..4]);
    }

    #[test]
    fn resident_memory_is_read_from_prometheus_text() {
        let text = "# TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes_total 1\n\
                    process_resident_memory_bytes 52428800\n\
                    process_open_fds 12\n";
        assert_eq!(resident_memory(text), Some(52_428_800));
        assert_eq!(resident_memory("process_resident_memory_bytes 1.5e6\n"), Some(1_500_000));
        assert_eq!(resident_memory("process_open_fds 12\n"), None);
    }
}
