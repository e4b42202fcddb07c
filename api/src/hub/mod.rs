//! Delivery: every event reaches the sockets that should see it, in order, once, across
//! reconnects and restarts.
//!
//! Two halves. The [`deliver`] stage, running where the projector runs, routes each logged event
//! once and appends it to the feed of every recipient (see [`switchboard_projector::feed`]),
//! where it gets the next number of that user's sequence. The [`Hub`], on every node that serves
//! sockets, follows the feeds of the users connected to it and pushes each entry to their
//! sockets with a resume token naming it. A reconnecting client passes its last token and gets
//! the entries after it read from its own feed: a resume costs what that user missed, whatever
//! everyone else sent meanwhile.
//!
//! A socket registered when its user's feed stood at number `S` is pushed every entry after `S`;
//! a resume replays from its token up to `S`. The hub pushes a user's entries strictly in order:
//! one it hears twice is dropped, and one it hears after a gap (the backend dropped something
//! while its connection broke) makes it read the missing entries from the feed first. A socket
//! too slow to keep up is disconnected and resumes from its last token.

pub mod deliver;
mod members;
mod router;
mod token;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use switchboard_projector::Behind;
use switchboard_projector::feed::{Entry, FeedError, Feeds, Published};
use switchboard_schemas::UserId;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use members::Memberships;
pub use router::{Routed, Router, pushed_types};
pub use token::{Resume, ResumeToken};

/// How many pushes may wait for one socket before it counts as too slow.
pub const MAILBOX_CAPACITY: usize = 1024;

/// One frame for a socket, with the feed entry it carries (0 for frames no feed keeps).
pub struct Push {
    pub seq: u64,
    pub frame: Utf8Bytes,
}

/// The sending end of one socket's queue of pushes.
///
/// The queue is a flume channel: it holds a `VecDeque` that takes memory only while pushes wait,
/// where tokio's channel allocates a first block of 32 slots and cache-padded state up front,
/// 1.8 KiB that every idle socket would hold.
pub struct Mailbox {
    pub session_id: Arc<str>,
    pub frames: flume::Sender<Push>,
    /// Cancelled when the socket could not keep up and must go.
    pub evicted: CancellationToken,
}

/// What a part of delivery is doing: only a live one delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageState {
    /// Not started yet.
    Starting,
    /// Waiting for the read models to reach the log position routing starts from.
    WaitingForReadModels(Vec<Behind>),
    /// Delivering.
    Live,
    /// Held up by an error; it tries again shortly, and nothing is lost meanwhile.
    Failed(String),
}

impl StageState {
    pub fn is_live(&self) -> bool {
        *self == StageState::Live
    }
}

impl fmt::Display for StageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageState::Starting => f.write_str("starting"),
            StageState::WaitingForReadModels(behind) => {
                f.write_str("waiting for the read models to reach where routing starts:")?;
                for (i, partition) in behind.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    write!(f, "{partition}")?;
                }
                Ok(())
            }
            StageState::Live => f.write_str("ok"),
            StageState::Failed(error) => write!(f, "failed, retrying: {error}"),
        }
    }
}

/// A user this node follows the feed of.
struct Follow {
    /// Resolves to the feed's head once the node hears what is appended after it.
    subscribed: Arc<OnceCell<ResumeToken>>,
    /// The last entry pushed; `None` until subscribed.
    pushed: Option<ResumeToken>,
    /// Entries heard before the head was known, to push once it is.
    early: Vec<(u64, Entry)>,
    mailboxes: Vec<Mailbox>,
    /// Since when the user has had no socket here.
    idle_since: Option<Instant>,
}

impl Follow {
    fn new() -> Follow {
        Follow {
            subscribed: Arc::default(),
            pushed: None,
            early: Vec::new(),
            mailboxes: Vec::new(),
            idle_since: None,
        }
    }

    /// Pushes `entry` if it is the next one; returns the number of the last entry pushed
    /// before it when entries are missing in between.
    fn push(&mut self, epoch: u64, entry: &Entry) -> Result<(), u64> {
        let Some(pushed) = &mut self.pushed else {
            self.early.push((epoch, entry.clone()));
            return Ok(());
        };
        if epoch != pushed.epoch {
            // The feed was created afresh: every token of the old one is void, and the sockets
            // holding one reconnect to be told so.
            tracing::warn!(epoch, "a user's feed has a new epoch; their sockets reconnect");
            self.skip_to(ResumeToken { epoch, seq: entry.seq, at: entry.at });
            return Ok(());
        }
        if entry.seq <= pushed.seq {
            return Ok(());
        }
        if entry.seq > pushed.seq + 1 {
            return Err(pushed.seq);
        }
        *pushed = ResumeToken { epoch, seq: entry.seq, at: entry.at };
        let frame = with_token(&entry.frame, pushed);
        self.send(Push { seq: entry.seq, frame });
        Ok(())
    }

    /// Disconnects the sockets (they resume, and a resume tells them what they missed or that
    /// they must sync) and goes on from `to`.
    fn skip_to(&mut self, to: ResumeToken) {
        for mailbox in self.mailboxes.drain(..) {
            mailbox.evicted.cancel();
        }
        self.pushed = Some(to);
    }

    fn send(&mut self, push: Push) {
        let Push { seq, frame } = push;
        self.mailboxes.retain(|mailbox| {
            match mailbox.frames.try_send(Push { seq, frame: frame.clone() }) {
                Ok(()) => true,
                Err(flume::TrySendError::Full(_)) => {
                    metrics::counter!("sockets_evicted_total").increment(1);
                    mailbox.evicted.cancel();
                    false
                }
                Err(flume::TrySendError::Disconnected(_)) => false,
            }
        });
        metrics::counter!("events_pushed_total").increment(self.mailboxes.len() as u64);
    }
}

/// The pushed frame: the frame the feed keeps, closed with its token.
pub fn with_token(frame: &str, token: &ResumeToken) -> Utf8Bytes {
    let mut text = String::with_capacity(frame.len() + 48);
    text.push_str(frame);
    text.push_str(",\"token\":\"");
    text.push_str(&token.to_string());
    text.push_str("\"}");
    text.into()
}

/// How long the node follows the feed of a user without a socket here: a reconnect within it
/// finds the feed followed, and the node forgets it after.
const IDLE_FOLLOW: Duration = Duration::from_secs(60);

/// How many resumes of this node may read from the feeds at once: when every socket of a node
/// reconnects together, the rest wait their turn rather than all hitting the feeds at once.
const CONCURRENT_REPLAYS: usize = 32;

#[derive(Clone)]
pub struct Hub {
    feeds: Arc<dyn Feeds>,
    users: Arc<Mutex<HashMap<UserId, Follow>>>,
    members: Arc<Memberships>,
    state: Arc<watch::Sender<StageState>>,
    /// What the feeds publish for this node, taken once and kept across restarts of `run`.
    heard: Arc<tokio::sync::Mutex<Option<mpsc::Receiver<Published>>>>,
    replays: Arc<Semaphore>,
}

impl Hub {
    pub fn new(feeds: Arc<dyn Feeds>) -> Hub {
        Hub {
            feeds,
            users: Arc::default(),
            members: Arc::default(),
            state: Arc::new(watch::Sender::new(StageState::Starting)),
            heard: Arc::default(),
            replays: Arc::new(Semaphore::new(CONCURRENT_REPLAYS)),
        }
    }

    /// A turn to read from the feeds for a resume.
    pub async fn replay_permit(&self) -> SemaphorePermit<'_> {
        self.replays.acquire().await.expect("the semaphore is never closed")
    }

    fn users(&self) -> MutexGuard<'_, HashMap<UserId, Follow>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a socket; it is pushed every entry of `user`'s feed after the returned token.
    pub async fn register(&self, user: UserId, mailbox: Mailbox) -> Result<ResumeToken, FeedError> {
        loop {
            let subscribed =
                self.users().entry(user).or_insert_with(Follow::new).subscribed.clone();
            let head = subscribed
                .get_or_try_init(|| async {
                    self.feeds.follow(user).await?;
                    self.feeds.head(user).await.map(ResumeToken::from)
                })
                .await;
            let mut users = self.users();
            let Some(follow) = users.get_mut(&user) else {
                continue; // The last socket of another try went meanwhile: follow afresh.
            };
            let head = match head {
                Ok(head) => *head,
                Err(error) => {
                    if follow.mailboxes.is_empty() {
                        users.remove(&user);
                    }
                    return Err(error);
                }
            };
            if follow.pushed.is_none() {
                follow.pushed = Some(head);
                for (epoch, entry) in std::mem::take(&mut follow.early) {
                    // An early entry is at most the one right after the head: anything later
                    // was appended after the head was read and is heard in order.
                    let _ = follow.push(epoch, &entry);
                }
            }
            follow.mailboxes.push(mailbox);
            follow.idle_since = None;
            return Ok(follow.pushed.expect("set above"));
        }
    }

    /// Removes a socket. The node follows its user's feed for [`IDLE_FOLLOW`] more: a reconnect
    /// within it finds the feed followed.
    pub fn unregister(&self, user: UserId, session_id: &str) {
        if let Some(follow) = self.users().get_mut(&user) {
            follow.mailboxes.retain(|m| &*m.session_id != session_id);
            if follow.mailboxes.is_empty() {
                follow.idle_since = Some(Instant::now());
            }
        }
    }

    /// Conversation members as this node's delivery routes them.
    pub fn memberships(&self) -> &Arc<Memberships> {
        &self.members
    }

    /// Whether this node hears its users' feeds now.
    pub fn state(&self) -> StageState {
        self.state.borrow().clone()
    }

    /// Resolves once the hub hears its users' feeds.
    pub async fn live(&self) {
        // The sender lives as long as `self`, so the wait ends only by going live.
        let _ = self.state.subscribe().wait_for(StageState::is_live).await;
    }

    fn set_state(&self, state: StageState) {
        metrics::gauge!("fanout_ready").set(if state.is_live() { 1.0 } else { 0.0 });
        self.state.send_replace(state);
    }

    /// Pushes what the feeds publish to the sockets here until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) -> Result<(), FeedError> {
        let mut slot = self.heard.lock().await;
        if slot.is_none() {
            let listening = self.feeds.listen().await.inspect_err(|error| {
                self.set_state(StageState::Failed(error.to_string()));
            })?;
            *slot = Some(listening);
        }
        let heard = slot.as_mut().expect("set above");
        self.set_state(StageState::Live);
        let mut sweep = tokio::time::interval(IDLE_FOLLOW / 2);
        loop {
            let published = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = sweep.tick() => {
                    self.forget_idle().await;
                    continue;
                }
                published = heard.recv() => published,
            };
            match published {
                Some(Published::Entry { user, epoch, entry }) => {
                    self.push(user, epoch, entry).await
                }
                Some(Published::Passing { user, frame }) => self.pass(user, &frame),
                Some(Published::Interrupted) => self.catch_up_all().await,
                None => {
                    let error = FeedError::Unavailable("the feeds stopped publishing".to_owned());
                    self.set_state(StageState::Failed(error.to_string()));
                    return Err(error);
                }
            }
        }
    }

    async fn push(&self, user: UserId, epoch: u64, entry: Entry) {
        let gap = match self.users().get_mut(&user) {
            Some(follow) => follow.push(epoch, &entry),
            None => return,
        };
        if let Err(pushed) = gap {
            let missed = self.read_missed(user, pushed, entry.seq).await;
            if let Some(follow) = self.users().get_mut(&user) {
                for missed in missed.unwrap_or_default() {
                    let _ = follow.push(epoch, &missed);
                }
                if follow.push(epoch, &entry).is_err() {
                    tracing::warn!("entries missed and not readable; the user's sockets resume");
                    follow.skip_to(ResumeToken { epoch, seq: entry.seq, at: entry.at });
                }
            }
        }
    }

    /// The entries of `user`'s feed after `after` and before `until`, which the node did not
    /// hear; `None` if the feed cannot be read now.
    async fn read_missed(&self, user: UserId, after: u64, until: u64) -> Option<Vec<Entry>> {
        metrics::counter!("fanout_gaps_total").increment(1);
        let missing = (until - after).saturating_sub(1) as usize;
        match self.feeds.read(user, after, missing).await {
            Ok(entries) => Some(entries),
            Err(error) => {
                tracing::warn!(%error, "cannot read the entries a gap left out");
                None
            }
        }
    }

    fn pass(&self, user: UserId, frame: &str) {
        if let Some(follow) = self.users().get_mut(&user)
            && let Some(pushed) = follow.pushed
        {
            follow.send(Push { seq: 0, frame: with_token(frame, &pushed) });
        }
    }

    /// Stops following the feeds of users who have had no socket here for [`IDLE_FOLLOW`].
    async fn forget_idle(&self) {
        let idle: Vec<UserId> = {
            let mut users = self.users();
            let idle: Vec<UserId> = users
                .iter()
                .filter(|(_, f)| f.idle_since.is_some_and(|since| since.elapsed() >= IDLE_FOLLOW))
                .map(|(user, _)| *user)
                .collect();
            for user in &idle {
                users.remove(user);
            }
            idle
        };
        for user in idle {
            if let Err(error) = self.feeds.unfollow(user).await {
                tracing::debug!(%error, "could not stop following an idle feed");
            }
            // A socket of the user registered while the node stopped following: follow again,
            // and fill in what was appended in between.
            if self.users().contains_key(&user) {
                if let Err(error) = self.feeds.follow(user).await {
                    tracing::warn!(%error, "could not follow a feed again; its sockets resume");
                    self.evict(user);
                    continue;
                }
                self.catch_up(user).await;
            }
        }
    }

    fn evict(&self, user: UserId) {
        if let Some(follow) = self.users().get_mut(&user) {
            follow.mailboxes.drain(..).for_each(|mailbox| mailbox.evicted.cancel());
        }
    }

    /// After the feeds may have dropped what they published, reads every followed feed's head
    /// and fills in what was missed.
    async fn catch_up_all(&self) {
        let followed: Vec<UserId> = self.users().keys().copied().collect();
        for user in followed {
            self.catch_up(user).await;
        }
    }

    /// Reads `user`'s feed head and pushes what the node has not heard of it.
    async fn catch_up(&self, user: UserId) {
        let Some(pushed) = self.users().get(&user).and_then(|f| f.pushed).map(|p| p.seq) else {
            return;
        };
        let head = match self.feeds.head(user).await {
            Ok(head) if head.seq > pushed => head,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot check a feed for what was missed; its sockets resume");
                self.evict(user);
                return;
            }
        };
        let missed = self.read_missed(user, pushed, head.seq + 1).await;
        if let Some(follow) = self.users().get_mut(&user) {
            for entry in missed.unwrap_or_default() {
                let _ = follow.push(head.epoch, &entry);
            }
            if follow.pushed.is_some_and(|now| now.seq < head.seq) {
                follow.skip_to(ResumeToken::from(head));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_projector::feed::embedded::EmbeddedFeeds;
    use switchboard_projector::feed::{Delivery, Retention};
    use switchboard_schemas::{Position, Topic};

    use super::*;

    fn mailbox(id: &str) -> (Mailbox, flume::Receiver<Push>) {
        let (frames, pushes) = flume::bounded(MAILBOX_CAPACITY);
        let mailbox = Mailbox { session_id: id.into(), frames, evicted: CancellationToken::new() };
        (mailbox, pushes)
    }

    async fn append(feeds: &dyn Feeds, user: UserId, offset: u64) {
        let source = Position { topic: Topic::Messages, partition: 0, offset };
        let frame = format!(r#"{{"op":"event","type":"test","at":{offset},"data":{{}}"#).into();
        feeds.append(&[Delivery { source, recipients: vec![user], frame }]).await.expect("append");
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_back_after_the_node_forgot_their_feed_is_pushed_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let feeds: Arc<dyn Feeds> =
            Arc::new(EmbeddedFeeds::open(dir.path(), Retention::default()).expect("feeds"));
        let hub = Hub::new(feeds.clone());
        let stop = CancellationToken::new();
        tokio::spawn(hub.clone().run(stop.clone()));
        hub.live().await;
        let ada = UserId(1);

        let (phone, pushes) = mailbox("phone");
        let start = hub.register(ada, phone).await.expect("register");
        append(feeds.as_ref(), ada, 0).await;
        assert_eq!(pushes.recv_async().await.expect("a push").seq, start.seq + 1);
        hub.unregister(ada, "phone");

        tokio::time::sleep(IDLE_FOLLOW * 2).await;
        assert!(!hub.users().contains_key(&ada), "forgotten once idle");
        append(feeds.as_ref(), ada, 1).await;

        let (laptop, pushes) = mailbox("laptop");
        let start = hub.register(ada, laptop).await.expect("register again");
        assert_eq!(start.seq, 2, "registered after what was appended meanwhile");
        append(feeds.as_ref(), ada, 2).await;
        let push = pushes.recv_async().await.expect("a push");
        assert_eq!(push.seq, 3);
        let token = format!(r#""token":"{}.3."#, start.epoch);
        assert!(push.frame.as_str().contains(&token), "{}", push.frame.as_str());
        stop.cancel();
    }
}
