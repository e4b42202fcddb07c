//! The sockets of the reconnect scenario: opened once to learn where each user's stream stands
//! and closed, then all opened again at once with `resume`, each followed until it has caught
//! up.
//!
//! Every socket keeps the resume token of the last frame it read, as a client must: the `ready`
//! frame's, then each event's. Before closing, a socket reads until it has been quiet for a
//! moment, so that the token it keeps is really its last (events routed just after it opened
//! arrive then); frames that still arrive before the server answers its close count too. A
//! frame without a token (an `error`) leaves the token as it was.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use super::catchup::{CatchUp, Drain};
use crate::load::CONNECT_CONCURRENCY;
use crate::load::client::{self, Socket, Sources};
use crate::load::endpoint::Endpoint;
use crate::load::setup::{Account, Progress};

/// How long a socket must have been sent nothing before it is closed, its token final.
const QUIET: Duration = Duration::from_secs(1);

/// How long a clean close may wait for the server's answering close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// After the last socket caught up (or the timeout), how long the sockets keep reading: an
/// event sent twice would mostly come right after the first copy.
const LINGER: Duration = Duration::from_secs(2);

/// The socket URL for `account`, resuming from `resume` if given.
fn url(ws_base: &str, account: &Account, resume: Option<&str>) -> String {
    let url = format!("{ws_base}/v1/ws?token={}", account.token);
    match resume {
        Some(resume) => format!("{url}&resume={resume}"),
        None => url,
    }
}

/// The fields of a server frame this scenario looks at.
#[derive(Deserialize)]
struct Frame<'a> {
    op: &'a str,
    #[serde(rename = "type", default)]
    kind: Option<&'a str>,
    #[serde(default)]
    token: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageSent<'a> {
    message_id: &'a str,
}

/// The resume token a frame carries, if any.
fn token_of(text: &str) -> Option<&str> {
    serde_json::from_str::<Frame<'_>>(text).ok()?.token
}

/// The message id of a `message.sent` event.
fn message_sent_id(text: &str) -> Option<&str> {
    let frame: Frame<'_> = serde_json::from_str(text).ok()?;
    if frame.op != "event" || frame.kind != Some("message.sent") {
        return None;
    }
    Some(serde_json::from_str::<MessageSent<'_>>(frame.data?.get()).ok()?.message_id)
}

/// What reading a socket gave.
enum Read {
    Text(Utf8Bytes),
    /// Pings, pongs, binary: nothing the scenario looks at.
    Other,
    /// The connection ended, for this reason.
    Ended(String),
}

fn read(message: Option<Result<Message, tungstenite::Error>>) -> Read {
    match message {
        Some(Ok(Message::Text(text))) => Read::Text(text),
        Some(Ok(Message::Close(frame))) => Read::Ended(frame.map_or_else(
            || "closed by the server".to_owned(),
            |f| format!("closed by the server ({} {})", u16::from(f.code), f.reason),
        )),
        Some(Ok(_)) => Read::Other,
        Some(Err(error)) => Read::Ended(format!("read failed: {error}")),
        None => Read::Ended("connection lost".to_owned()),
    }
}

/// Waits until `flag` is true.
async fn raised(flag: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens once the run is over.
    let _ = flag.wait_for(|raised| *raised).await;
}

/// Closes cleanly: sends a close frame and reads until the server's answer, passing on any
/// text frames that arrive before it.
async fn close(mut socket: Socket, mut on_text: impl FnMut(&str)) {
    // Best effort: a socket the server already dropped has nothing left to say.
    let _ = socket.close(None).await;
    let answered = async {
        loop {
            match read(socket.next().await) {
                Read::Text(text) => on_text(&text),
                Read::Other => {}
                Read::Ended(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, answered).await;
}

/// Where every socket stood when it closed.
#[derive(Debug, Default)]
pub struct Left {
    /// Each account's last resume token.
    pub tokens: Vec<String>,
    /// Sockets the server closed (or lost) before the client did, by why. Their token is still
    /// the last frame they read.
    pub lost: BTreeMap<String, u64>,
}

/// Opens a socket per account and keeps each reading; once all are open, closes each after it
/// has been quiet for [`QUIET`]. Returns when every socket is closed.
pub async fn leave_all(
    ws_base: &str,
    accounts: &[Account],
    sources: Sources,
) -> anyhow::Result<Left> {
    let (closing, close_signal) = watch::channel(false);
    let mut progress = Progress::new("opening sockets", accounts.len());
    let mut opened = stream::iter(accounts.iter().enumerate())
        .map(|(index, account)| async move {
            let (socket, ready) =
                client::open(Endpoint::Ws, &url(ws_base, account, None), sources.of(index))
                    .await
                    .with_context(|| format!("connecting user {}", account.id))?;
            anyhow::Ok((index, socket, ready))
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut sockets = JoinSet::new();
    while let Some((index, socket, ready)) = opened.try_next().await? {
        let close_signal = close_signal.clone();
        sockets.spawn(async move { (index, hold(socket, ready.token, close_signal).await) });
        progress.advance();
    }
    eprintln!("closing every socket once it has been sent nothing for {QUIET:?}");
    closing.send_replace(true);
    let mut left = Left { tokens: vec![String::new(); accounts.len()], lost: BTreeMap::new() };
    while let Some(joined) = sockets.join_next().await {
        let (index, (token, lost)) = joined.context("a socket's task failed")?;
        left.tokens[index] = token;
        if let Some(reason) = lost {
            *left.lost.entry(reason).or_default() += 1;
        }
    }
    Ok(left)
}

/// Reads `socket` until `close_signal`, then until it is quiet, then closes it. Returns the
/// last resume token read, and why the connection ended if the client did not end it.
async fn hold(
    mut socket: Socket,
    mut token: String,
    mut close_signal: watch::Receiver<bool>,
) -> (String, Option<String>) {
    let mut keep = |text: &str| {
        if let Some(newer) = token_of(text) {
            token = newer.to_owned();
        }
    };
    loop {
        let message = tokio::select! {
            () = raised(&mut close_signal) => break,
            message = socket.next() => message,
        };
        match read(message) {
            Read::Text(text) => keep(&text),
            Read::Other => {}
            Read::Ended(reason) => return (token, Some(reason)),
        }
    }
    while let Ok(message) = tokio::time::timeout(QUIET, socket.next()).await {
        match read(message) {
            Read::Text(text) => keep(&text),
            Read::Other => {}
            Read::Ended(reason) => return (token, Some(reason)),
        }
    }
    close(socket, keep).await;
    (token, None)
}

/// How every socket comes back.
pub struct Return<'a> {
    pub ws_base: &'a str,
    pub accounts: &'a [Account],
    /// Each account's last resume token.
    pub tokens: &'a [String],
    /// The message ids each account is owed.
    pub owed: &'a [Arc<HashSet<String>>],
    /// Upgrades in flight at once.
    pub concurrency: usize,
    /// Where each socket connects from.
    pub sources: Sources,
    /// From the start, how long the sockets may take to catch up.
    pub timeout: Duration,
}

impl Return<'_> {
    /// Reconnects every socket with `resume`, `concurrency` upgrades at a time, and follows each
    /// until every socket has caught up or the timeout; then calls `at_end`, with the sockets
    /// still open, and closes them all.
    pub async fn run<T>(&self, at_end: impl AsyncFnOnce() -> T) -> (Drain, T) {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let (stopping, stop_signal) = watch::channel(false);
        // Sockets that may still catch up: each leaves when it does, fails or is lost.
        let pending = Arc::new(AtomicUsize::new(self.accounts.len()));
        let mut drain = Drain::default();
        let mut sockets = JoinSet::new();
        let mut opened = stream::iter(0..self.accounts.len())
            .map(|index| async move {
                let url = url(self.ws_base, &self.accounts[index], Some(&self.tokens[index]));
                let open = client::open(Endpoint::Ws, &url, self.sources.of(index));
                let opened = tokio::time::timeout_at(deadline.into(), open).await;
                (index, opened.unwrap_or_else(|_| Err(anyhow::anyhow!("no `ready` in time"))))
            })
            .buffer_unordered(self.concurrency);
        let mut progress = Progress::new("reconnecting", self.accounts.len());
        while let Some((index, opened)) = opened.next().await {
            progress.advance();
            let owed = Arc::clone(&self.owed[index]);
            let (socket, ready) = match opened {
                Ok(opened) => opened,
                Err(error) => {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    drain.add_failed(format!("{error:#}"), owed.len() as u64);
                    continue;
                }
            };
            let follower = Follower {
                catch_up: CatchUp::new(owed),
                resumed: ready.resumed == Some(true),
                start,
                pending: Arc::clone(&pending),
            };
            sockets.spawn(follower.run(socket, stop_signal.clone()));
        }
        while pending.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let behind = pending.load(Ordering::Relaxed);
        eprintln!("{behind} sockets still catching up; reading {LINGER:?} more for duplicates");
        tokio::time::sleep(LINGER).await;
        let end = at_end().await;
        stopping.send_replace(true);
        while let Some(joined) = sockets.join_next().await {
            match joined {
                Ok(outcome) => drain.add(outcome),
                Err(error) => drain.add_failed(format!("the socket's task failed: {error}"), 0),
            }
        }
        (drain, end)
    }
}

/// One socket that came back, until the run stops it.
struct Follower {
    catch_up: CatchUp,
    resumed: bool,
    start: Instant,
    pending: Arc<AtomicUsize>,
}

impl Follower {
    async fn run(
        mut self,
        mut socket: Socket,
        mut stop_signal: watch::Receiver<bool>,
    ) -> super::catchup::Outcome {
        self.arrived(|catch_up, after| catch_up.ready(after));
        let lost = loop {
            let message = tokio::select! {
                () = raised(&mut stop_signal) => break None,
                message = socket.next() => message,
            };
            match read(message) {
                Read::Text(text) => {
                    if let Some(id) = message_sent_id(&text) {
                        self.arrived(|catch_up, after| catch_up.message(id, after));
                    }
                }
                Read::Other => {}
                Read::Ended(reason) => break Some(reason),
            }
        };
        match lost {
            // It will not catch up any more.
            Some(_) if !self.catch_up.caught_up() => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
            }
            Some(_) => {}
            None => close(socket, |_| {}).await,
        }
        self.catch_up.finish(self.resumed, lost)
    }

    /// Notes an arrival; the socket leaves the pending ones when it completes the catch-up.
    fn arrived(&mut self, note: impl FnOnce(&mut CatchUp, Duration) -> bool) {
        if note(&mut self.catch_up, self.start.elapsed()) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_give_their_token_and_message_ids() {
        let ready = r#"{"heartbeat_ms":25000,"op":"ready","session_id":"s","token":"17.1.17","user_id":"5"}"#;
        assert_eq!(token_of(ready), Some("17.1.17"));
        assert_eq!(message_sent_id(ready), None);
        let sent = r#"{"op":"event","type":"message.sent","at":1,"data":{"conversation_id":"9","message_id":"2549","sender":"5","client_msg_id":"offline-3","body":"x","reply_to":null,"attachments":[]},"token":"17.2.18"}"#;
        assert_eq!(token_of(sent), Some("17.2.18"));
        assert_eq!(message_sent_id(sent), Some("2549"));
        let presence = r#"{"op":"event","type":"presence.changed","at":1,"data":{"user_id":"6","online":true},"token":"17.2.18"}"#;
        assert_eq!(message_sent_id(presence), None);
        let error = r#"{"op":"error","ref":null,"error":{"code":"sync_required","message":"m"}}"#;
        assert_eq!(token_of(error), None);
        assert_eq!(token_of("not json"), None);
    }

    #[test]
    fn resume_urls_carry_both_tokens() {
        let account = Account {
            id: "1".into(),
            handle: "ld_1".into(),
            token: "eyJ.a.b".into(),
            expires_at: 0,
        };
        assert_eq!(url("ws://h:1", &account, None), "ws://h:1/v1/ws?token=eyJ.a.b");
        assert_eq!(
            url("ws://h:1", &account, Some("17.2.18")),
            "ws://h:1/v1/ws?token=eyJ.a.b&resume=17.2.18"
        );
    }
}
