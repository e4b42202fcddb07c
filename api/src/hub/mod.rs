//! Fan-out: this node follows the log and pushes each event to the local sockets that should
//! see it. Sending never waits on delivery; a socket too slow to keep up is disconnected and
//! resumes from its last token.
//!
//! Every pushed frame carries a resume token: the node's position in the log just after that
//! event. A socket registered at position `S` receives every routed event after `S` through its
//! mailbox; a reconnecting client replays from its token up to `S`, so it sees each event once.
//!
//! Before it pushes anything, the fan-out waits for the read models to hold everything logged
//! before its start, since it reads memberships from them. An event it cannot route (the store
//! does not answer) is retried, with backoff, until it can: the events behind it wait, and no
//! socket loses any. A fan-out that stopped (the log failed) starts again where it stood. While
//! it waits or retries the node cannot deliver: [`Hub::state`] says why, for `/readyz`, the
//! `fanout_ready` gauge and a warning in the log, so that a node is never silently mute.

mod members;
mod router;
mod token;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use switchboard_ingest::log::{Cursor, Log, LogError};
use switchboard_projector::presence::Presence;
use switchboard_projector::store::ReadModel;
use switchboard_projector::{Behind, Progress};
use switchboard_schemas::{Codec, Event, Topic, UserId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use members::Memberships;
pub use router::{Routed, Router};
pub use token::ResumeToken;

/// The topics whose events reach sockets.
pub const FANOUT_TOPICS: [Topic; 5] =
    [Topic::Conversations, Topic::Messages, Topic::Presence, Topic::Calls, Topic::Signals];

/// How many pushes may wait for one socket before it counts as too slow.
pub const MAILBOX_CAPACITY: usize = 1024;

/// How often a fan-out still waiting for the read models says so in the log.
const WAITING_REPORT: Duration = Duration::from_secs(10);
/// The first and the longest wait before an event that could not be routed is tried again.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_LONGEST: Duration = Duration::from_secs(5);

/// The sending end of one socket's queue of pushes.
pub struct Mailbox {
    pub session_id: Arc<str>,
    pub frames: mpsc::Sender<Utf8Bytes>,
    /// Cancelled when the socket could not keep up and must go.
    pub evicted: CancellationToken,
}

#[derive(Default)]
struct Sockets {
    /// Where the fan-out stands: every event before it has been pushed.
    cursor: Cursor,
    by_user: HashMap<UserId, Vec<Mailbox>>,
}

#[derive(Clone)]
pub struct Hub {
    sockets: Arc<Mutex<Sockets>>,
    members: Arc<Memberships>,
    state: Arc<watch::Sender<FanoutState>>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            sockets: Arc::default(),
            members: Arc::default(),
            state: Arc::new(watch::Sender::new(FanoutState::Starting)),
        }
    }
}

/// What the fan-out is doing: only a live one delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FanoutState {
    /// Not started yet.
    Starting,
    /// Waiting for the read models to reach the log position the fan-out starts from.
    WaitingForReadModels(Vec<Behind>),
    /// Pushing events as they are logged.
    Live,
    /// Held up by an error; it tries again shortly, and its sockets get what they missed then.
    Failed(String),
}

impl FanoutState {
    pub fn is_live(&self) -> bool {
        *self == FanoutState::Live
    }
}

impl fmt::Display for FanoutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FanoutState::Starting => f.write_str("starting"),
            FanoutState::WaitingForReadModels(behind) => {
                f.write_str("waiting for the read models to reach where the fan-out starts:")?;
                for (i, partition) in behind.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    write!(f, "{partition}")?;
                }
                Ok(())
            }
            FanoutState::Live => f.write_str("ok"),
            FanoutState::Failed(error) => write!(f, "failed, retrying: {error}"),
        }
    }
}

#[derive(Serialize)]
struct PushFrame<'a> {
    op: &'static str,
    #[serde(rename = "type")]
    kind: &'a str,
    at: i64,
    data: &'a serde_json::value::RawValue,
    token: &'a str,
}

impl Routed {
    pub fn frame(&self, token: &str) -> Utf8Bytes {
        let frame =
            PushFrame { op: "event", kind: self.kind, at: self.at, data: &self.data, token };
        serde_json::to_string(&frame).expect("frames serialise").into()
    }
}

impl Hub {
    /// Adds a socket; it receives every event routed to `user` after the returned position.
    pub fn register(&self, user: UserId, mailbox: Mailbox) -> Cursor {
        let mut sockets = self.sockets.lock().expect("hub lock");
        sockets.by_user.entry(user).or_default().push(mailbox);
        sockets.cursor.clone()
    }

    pub fn unregister(&self, user: UserId, session_id: &str) {
        let mut sockets = self.sockets.lock().expect("hub lock");
        if let Some(mailboxes) = sockets.by_user.get_mut(&user) {
            mailboxes.retain(|m| &*m.session_id != session_id);
            if mailboxes.is_empty() {
                sockets.by_user.remove(&user);
            }
        }
    }

    /// Conversation members as this node's fan-out knows them.
    pub fn memberships(&self) -> &Memberships {
        &self.members
    }

    /// What the fan-out is doing now.
    pub fn state(&self) -> FanoutState {
        self.state.borrow().clone()
    }

    /// Resolves once the fan-out pushes events.
    pub async fn live(&self) {
        // The sender lives as long as `self`, so the wait ends only by going live.
        let _ = self.state.subscribe().wait_for(FanoutState::is_live).await;
    }

    /// Records that the log failed the fan-out, which is started again.
    fn failed(&self, error: LogError) -> LogError {
        self.set_state(FanoutState::Failed(error.to_string()));
        error
    }

    fn set_state(&self, state: FanoutState) {
        metrics::gauge!("fanout_ready").set(if state.is_live() { 1.0 } else { 0.0 });
        self.state.send_replace(state);
    }

    /// Follows the log and pushes events until `stop` is cancelled: from the log's end on the
    /// first start, and from where it stood on a start after a failure, so that no socket
    /// misses what was logged in between.
    pub async fn run(
        self,
        log: Arc<dyn Log>,
        store: Arc<dyn ReadModel>,
        presence: Arc<dyn Presence>,
        progress: Progress,
        stop: CancellationToken,
    ) -> Result<(), LogError> {
        let stood = self.sockets.lock().expect("hub lock").cursor.clone();
        let start = match stood.is_empty() {
            true => Cursor::end(log.as_ref(), &FANOUT_TOPICS).await.map_err(|e| self.failed(e))?,
            false => stood,
        };
        self.sockets.lock().expect("hub lock").cursor = start.clone();
        // Memberships are read from the store on first use; it must have caught up with
        // everything before the point the fan-out starts from.
        if !self.wait_for_read_models(&progress, &start, &stop).await {
            return Ok(());
        }
        let mut reader = log.reader(start.clone()).await.map_err(|e| self.failed(e))?;
        let mut router = Router::live(store, presence, self.members.clone());
        let codec = Codec::new();
        tracing::info!(from = %start, "fan-out live");
        self.set_state(FanoutState::Live);
        loop {
            let records = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                records = reader.next_batch(1024) => records.map_err(|e| self.failed(e))?,
            };
            let mut routed = Vec::with_capacity(records.len());
            for record in records {
                let route = match codec.decode(&record.value) {
                    Ok(event) => match self.route_patiently(&mut router, &event, &stop).await {
                        Some(route) => route,
                        None => return Ok(()),
                    },
                    Err(error) => {
                        tracing::error!(position = %record.position, %error, "fan-out skips undecodable record");
                        None
                    }
                };
                routed.push((record.position, route));
            }
            self.push(routed);
        }
    }

    /// Routes `event`, trying again with backoff while the store fails: the events behind it
    /// wait for it rather than anyone losing it. `None` if stopped first.
    async fn route_patiently(
        &self,
        router: &mut Router,
        event: &Event,
        stop: &CancellationToken,
    ) -> Option<Option<Routed>> {
        let mut backoff = RETRY_FIRST;
        let mut failed = false;
        loop {
            match router.route(event).await {
                Ok(route) => {
                    if failed {
                        tracing::info!("fan-out routes again");
                        self.set_state(FanoutState::Live);
                    }
                    return Some(route);
                }
                Err(error) => {
                    failed = true;
                    metrics::counter!("fanout_retries_total").increment(1);
                    tracing::warn!(%error, retry_in = ?backoff, "fan-out cannot route an event; delivery waits");
                    self.set_state(FanoutState::Failed(error.to_string()));
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_LONGEST);
                }
            }
        }
    }

    /// Waits until the read models hold everything before `start`, saying what it waits for
    /// while it does. Returns `false` if stopped first.
    async fn wait_for_read_models(
        &self,
        progress: &Progress,
        start: &Cursor,
        stop: &CancellationToken,
    ) -> bool {
        let caught_up = progress.wait_for_cursor(start);
        tokio::pin!(caught_up);
        let mut report = tokio::time::interval(WAITING_REPORT);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: readiness says at once what the fan-out waits for.
        let mut reported_before = false;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                _ = &mut caught_up => return true,
                _ = report.tick() => {
                    let waiting = FanoutState::WaitingForReadModels(progress.behind(start));
                    if reported_before {
                        tracing::warn!("fan-out delivers nothing yet: {waiting}");
                    }
                    reported_before = true;
                    self.set_state(waiting);
                }
            }
        }
    }

    fn push(&self, routed: Vec<(switchboard_schemas::Position, Option<Routed>)>) {
        let mut sockets = self.sockets.lock().expect("hub lock");
        let Sockets { cursor, by_user } = &mut *sockets;
        for (position, route) in routed {
            cursor.advance(position);
            let Some(route) = route else { continue };
            let mut frame = None;
            for user in &route.recipients {
                let Some(mailboxes) = by_user.get_mut(user) else { continue };
                let frame = frame.get_or_insert_with(|| route.frame(&ResumeToken::encode(cursor)));
                mailboxes.retain(|mailbox| match mailbox.frames.try_send(frame.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        metrics::counter!("sockets_evicted_total").increment(1);
                        mailbox.evicted.cancel();
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                metrics::counter!("events_pushed_total").increment(mailboxes.len() as u64);
            }
        }
        by_user.retain(|_, mailboxes| !mailboxes.is_empty());
        self.members.routed_up_to(cursor);
    }
}
