//! One connected socket: registration with the hub and presence, the optional replay of what a
//! resuming client missed (read from the user's feed), then the loop that reads client ops,
//! writes pushes and replies, and keeps the connection alive.
//!
//! A [`Session`] and its greeting (`ready`, then what a resume missed) are the same whatever
//! carries the frames: `/socket.io/` uses them too, through its own [`Outbox`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream, StreamExt};
use futures_util::{Future, SinkExt};
use serde_json::Value;
use switchboard_ingest::Origin;
use switchboard_projector::feed::Entry;
use switchboard_schemas::{SessionClosed, SessionOpened, UserId};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::ops::OpQueue;
use super::protocol;
use super::slots::Slot;
use crate::error::ApiError;
use crate::hub::{MAILBOX_CAPACITY, Mailbox, Push, Resume, ResumeToken, with_token};
use crate::state::AppState;

/// The longest a single write to a socket may take before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a socket the server closes is kept open for the client's answering close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(5);

/// Why the server closes a socket: a close code and its reason (see docs/protocol.md).
#[derive(Clone, Copy)]
pub struct Closing {
    pub code: u16,
    pub reason: &'static str,
}

pub const GOING_AWAY: Closing = Closing { code: 1001, reason: "server shutting down" };
const TOO_BIG: Closing = Closing { code: 1009, reason: "frame too large" };
pub const TRY_AGAIN: Closing = Closing { code: 1013, reason: "try again later" };
const IDLE: Closing = Closing { code: 4000, reason: "no activity" };
pub const TOO_SLOW: Closing =
    Closing { code: 4008, reason: "too slow to keep up; reconnect and resume" };

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// Where a session's frames go: the text frames of `/v1/ws`, whatever carries them.
pub trait Outbox: Send {
    /// Queues a frame for the next flush.
    fn queue_text(&mut self, frame: Utf8Bytes) -> impl Future<Output = Result<(), Gone>> + Send;

    fn flush(&mut self) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Writes one frame now.
    fn send_text(&mut self, frame: Utf8Bytes) -> impl Future<Output = Result<(), Gone>> + Send {
        async move {
            self.queue_text(frame).await?;
            self.flush().await
        }
    }
}

pub struct Session {
    pub state: AppState,
    pub user: UserId,
    pub id: Arc<str>,
    /// What the hub pushes to this socket.
    pub frames: flume::Receiver<Push>,
    /// Cancelled when the socket could not keep up and must go.
    pub evicted: CancellationToken,
    /// Where the user's feed stood when this socket registered: pushes cover everything after.
    registered_at: ResumeToken,
    /// Entries up to this number have reached the client; pushes of them are dropped.
    delivered: u64,
}

/// What a resume sends before the live stream, or why it cannot.
enum Replay {
    /// Entries follow, starting with these, up to where the socket registered.
    From {
        token: ResumeToken,
        first: Vec<Entry>,
    },
    Refused(ApiError),
}

/// How many entries a replay reads at a time.
const REPLAY_PAGE: usize = 256;

/// Serves an upgraded socket of `user` until it closes, or turns it away when the user's feed
/// cannot be followed now. The socket holds its `places` (under the node's connection cap and
/// its user's socket cap) until then.
///
/// The socket is split before anything waits, which moves it to the heap behind its two halves:
/// a socket value held across an await would sit inline in the connection's task, and an idle
/// socket's memory is mostly that task. For the same reason, the steps a socket takes once
/// (opening, replaying, closing) are boxed, so the task keeps only the loop that runs for the
/// socket's life.
pub fn serve(
    state: AppState,
    user: UserId,
    device: Option<String>,
    resume: Option<Resume>,
    places: (OwnedSemaphorePermit, Slot),
    socket: WebSocket,
) -> impl Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    async move {
        let _places = places;
        let mut writer = Writer::new(sink);
        match Box::pin(Session::open(state, user, device)).await {
            Ok(mut session) => {
                match Box::pin(session.greet(&mut writer, resume)).await {
                    Ok(Ok(())) => session.serve(writer, stream).await,
                    Ok(Err(error)) => Box::pin(close_for_now(writer, stream, &error)).await,
                    Err(Gone) => {}
                }
                Box::pin(session.close()).await;
            }
            Err(error) => Box::pin(close_for_now(writer, stream, &error)).await,
        }
    }
}

impl Session {
    /// Registers a socket of `user`; fails when the user's feed cannot be followed now.
    pub async fn open(
        state: AppState,
        user: UserId,
        device: Option<String>,
    ) -> Result<Session, ApiError> {
        let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let (sender, frames) = flume::bounded(MAILBOX_CAPACITY);
        let evicted = CancellationToken::new();
        let mailbox = Mailbox { session_id: id.clone(), frames: sender, evicted: evicted.clone() };
        let registered_at = state.hub.register(user, mailbox).await?;
        metrics::gauge!("ws_connections").increment(1.0);

        if let Err(error) = state.presence.open_session(user, &id, &state.node_id).await {
            tracing::warn!(%error, "presence unavailable; session not recorded there");
        }
        let opened = SessionOpened {
            user_id: user,
            session_id: id.to_string(),
            node_id: state.node_id.clone(),
            device,
        };
        if let Err(error) = state.ingest.append(&Origin::user(user, &*id), opened.into()).await {
            tracing::warn!(%error, "session-opened event not logged");
        }
        let delivered = registered_at.seq;
        Ok(Session { state, user, id, frames, evicted, registered_at, delivered })
    }

    /// Sends `ready`, then what a resume missed or why it cannot be replayed. The inner error:
    /// the feed cannot be read now, and the socket should be closed for now.
    pub async fn greet(
        &mut self,
        out: &mut impl Outbox,
        resume: Option<Resume>,
    ) -> Result<Result<(), ApiError>, Gone> {
        let replay = match resume {
            None => None,
            Some(Resume::Retired) => Some(Replay::Refused(ApiError::sync_required(
                "the token is of a kind this server no longer resumes from",
            ))),
            Some(Resume::From(token)) => match self.plan_replay(token).await {
                Ok(replay) => Some(replay),
                Err(error) => return Ok(Err(error)),
            },
        };
        let heartbeat = self.state.config.ping_interval.0.as_millis();
        let (resumed, token) = match &replay {
            None => (None, self.registered_at),
            Some(Replay::From { token, .. }) => (Some(true), *token),
            Some(Replay::Refused(_)) => (Some(false), self.registered_at),
        };
        let ready = protocol::ready(self.user, &self.id, &token.to_string(), heartbeat, resumed);
        out.send_text(ready.into()).await?;
        match replay {
            None => Ok(Ok(())),
            Some(Replay::Refused(refusal)) => {
                out.send_text(protocol::error(Value::Null, &refusal).into()).await?;
                Ok(Ok(()))
            }
            Some(Replay::From { token, first }) => self.replay(out, token, first).await,
        }
    }

    /// Up to a page of the user's feed after `after`, for a resume.
    async fn read_feed(&self, after: u64) -> Result<Vec<Entry>, ApiError> {
        let _permit = self.state.hub.replay_permit().await;
        metrics::counter!("resume_feed_reads_total").increment(1);
        let page = self.state.feeds.read(self.user, after, REPLAY_PAGE).await?;
        Ok(page)
    }

    /// Whether a resume from `token` can be served from the user's feed, and its first page;
    /// an error when the feed cannot be read now (the client should resume again shortly).
    async fn plan_replay(&mut self, token: ResumeToken) -> Result<Replay, ApiError> {
        let registered = self.registered_at;
        if token.epoch != registered.epoch {
            metrics::counter!("resumes_total", "outcome" => "sync_required").increment(1);
            return Ok(Replay::Refused(ApiError::sync_required(
                "the token is of an earlier epoch of your feed, which was created afresh",
            )));
        }
        if token.seq > registered.seq {
            // Pushed by a node that heard the feed sooner than this one, or numbered by a feed
            // that has since lost it: only the feed's head tells.
            let head = self.state.feeds.head(self.user).await?;
            if token.seq > head.seq || token.epoch != head.epoch {
                metrics::counter!("resumes_total", "outcome" => "sync_required").increment(1);
                return Ok(Replay::Refused(ApiError::sync_required(
                    "the token names events your feed does not hold",
                )));
            }
        }
        self.delivered = self.delivered.max(token.seq);
        if token.seq >= registered.seq {
            metrics::counter!("resumes_total", "outcome" => "resumed").increment(1);
            return Ok(Replay::From { token, first: Vec::new() });
        }
        let first = self.read_feed(token.seq).await?;
        if first.first().is_some_and(|entry| entry.seq == token.seq + 1) {
            metrics::counter!("resumes_total", "outcome" => "resumed").increment(1);
            return Ok(Replay::From { token, first });
        }
        metrics::counter!("resumes_total", "outcome" => "sync_required").increment(1);
        Ok(Replay::Refused(ApiError::sync_required(format_args!(
            "your feed no longer holds what followed the token (it keeps {} and the newest {} events)",
            humantime::format_duration(self.state.config.resume_window.0),
            self.state.config.resume_min_events
        ))))
    }

    /// Sends the entries of the user's feed from `first` on, up to where the socket registered.
    /// The inner error: the feed could not be read on; what was sent so far stands.
    async fn replay(
        &self,
        out: &mut impl Outbox,
        token: ResumeToken,
        mut page: Vec<Entry>,
    ) -> Result<Result<(), ApiError>, Gone> {
        let until = self.registered_at.seq;
        let mut last = token.seq;
        while last < until && !page.is_empty() {
            for entry in page.iter().take_while(|entry| entry.seq <= until) {
                let at = ResumeToken { epoch: token.epoch, seq: entry.seq, at: entry.at };
                out.queue_text(with_token(&entry.frame, &at)).await?;
                metrics::counter!("resume_events_total").increment(1);
                last = entry.seq;
            }
            out.flush().await?;
            if last >= until {
                break;
            }
            page = match self.read_feed(last).await {
                Ok(page) => page,
                Err(error) => return Ok(Err(error)),
            };
        }
        Ok(Ok(()))
    }

    async fn serve(&mut self, mut writer: Writer, mut stream: Stream) {
        let config = &self.state.config;
        let mut keepalive = Keepalive::new(config.ping_interval.0, config.idle_timeout.0);
        let timer = sleep_until(keepalive.next());
        tokio::pin!(timer);
        let mut ops = OpQueue::new(self.state.clone(), self.user, self.id.clone());
        let close = loop {
            // Each branch only queues what it writes; the flush below sends it together with
            // whatever else is ready by then.
            let queued = tokio::select! {
                _ = self.state.shutdown.cancelled() => break Some(GOING_AWAY),
                _ = self.evicted.cancelled() => break Some(TOO_SLOW),
                () = &mut timer => {
                    let due = keepalive.due(Instant::now());
                    timer.as_mut().reset(keepalive.next());
                    match due {
                        Due::Idle => break Some(IDLE),
                        Due::Ping => writer.queue(Message::Ping(Default::default())).await,
                        Due::Nothing => Ok(()),
                    }
                }
                push = self.frames.recv_async() => match push {
                    Ok(push) if !self.is_new(&push) => Ok(()),
                    Ok(push) => writer.queue_text(push.frame).await,
                    Err(flume::RecvError::Disconnected) => break None,
                },
                (reply, ()) = ops.next_reply() => writer.queue_text(reply.into()).await,
                message = stream.next(), if !ops.is_full() => {
                    keepalive.heard(Instant::now());
                    match message {
                        Some(Ok(Message::Text(text))) if text.len() > config.max_frame_bytes => {
                            writer.queue_text(protocol::error(Value::Null, &ApiError::frame_too_large(config.max_frame_bytes)).into()).await
                        }
                        Some(Ok(Message::Text(text))) => {
                            ops.push(text, ());
                            Ok(())
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let error = ApiError::bad_request("binary frames are not part of the protocol; send JSON text");
                            writer.queue_text(protocol::error(Value::Null, &error).into()).await
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        // The client closed: flushing sends the close reply the protocol queued.
                        Some(Ok(Message::Close(_))) => {
                            let _ = writer.flush().await;
                            break None;
                        }
                        None => break None,
                        Some(Err(error)) => {
                            tracing::debug!(%error, "socket read failed");
                            let too_big = matches!(error.into_inner().downcast_ref::<tungstenite::Error>(), Some(tungstenite::Error::Capacity(_)));
                            break too_big.then_some(TOO_BIG);
                        }
                    }
                }
            };
            let written = match queued {
                Ok(()) => writer.flush_with(self, &mut ops).await,
                Err(gone) => Err(gone),
            };
            if written.is_err() {
                break None;
            }
        };
        if let Some(Closing { code, reason }) = close {
            let frame = CloseFrame { code, reason: reason.into() };
            if writer.send(Message::Close(Some(frame))).await.is_ok() {
                finish_close_handshake(&mut stream).await;
            }
        }
    }

    /// Whether `push` is news to the client: not an entry a replay already sent.
    pub fn is_new(&self, push: &Push) -> bool {
        push.seq == 0 || push.seq > self.delivered
    }

    pub async fn close(self) {
        let state = &self.state;
        state.hub.unregister(self.user, &self.id);
        metrics::gauge!("ws_connections").decrement(1.0);
        if let Err(error) = state.presence.close_session(self.user, &self.id).await {
            tracing::warn!(%error, "presence unavailable; session not closed there");
        }
        let closed = SessionClosed {
            user_id: self.user,
            session_id: self.id.to_string(),
            node_id: state.node_id.clone(),
        };
        if let Err(error) =
            state.ingest.append(&Origin::user(self.user, &*self.id), closed.into()).await
        {
            tracing::warn!(%error, "session-closed event not logged");
        }
    }
}

/// Closes a socket that cannot be served now, because the feeds do not answer: the error as a
/// frame, then close code 1013, "try again later". The client reconnects, resuming from its
/// last processed token, and misses nothing.
async fn close_for_now(mut writer: Writer, mut stream: Stream, error: &ApiError) {
    tracing::warn!(code = error.code, message = %error.message, "socket closed for now");
    let close = CloseFrame { code: TRY_AGAIN.code, reason: TRY_AGAIN.reason.into() };
    if writer.send_text(protocol::error(Value::Null, error).into()).await.is_ok()
        && writer.send(Message::Close(Some(close))).await.is_ok()
    {
        finish_close_handshake(&mut stream).await;
    }
}

/// Waits (bounded) for the client to answer the server's close frame. Dropping the connection
/// at once would reset it under any frame the client had under way, an automatic pong say, and
/// the client would lose the close frame, and its code, to the reset.
async fn finish_close_handshake(stream: &mut Stream) {
    let answered = async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, answered).await;
}

/// A socket's two clocks on one timer: a ping goes out every `ping_every`, and the socket closes
/// once the client has sent nothing for `idle_after`. One timer instead of an interval and a
/// sleep costs an idle socket less, and a frame from the client only moves a deadline rather than
/// re-arming a timer.
struct Keepalive {
    ping_every: Duration,
    idle_after: Duration,
    ping_at: Instant,
    idle_at: Instant,
}

/// What the keepalive timer found when it fired.
enum Due {
    Ping,
    Idle,
    /// The client was heard since the timer was set: nothing is due yet.
    Nothing,
}

impl Keepalive {
    fn new(ping_every: Duration, idle_after: Duration) -> Keepalive {
        let now = Instant::now();
        Keepalive { ping_every, idle_after, ping_at: now + ping_every, idle_at: now + idle_after }
    }

    /// When the timer should next fire.
    fn next(&self) -> Instant {
        self.ping_at.min(self.idle_at)
    }

    fn heard(&mut self, now: Instant) {
        self.idle_at = now + self.idle_after;
    }

    fn due(&mut self, now: Instant) -> Due {
        if now >= self.idle_at {
            Due::Idle
        } else if now >= self.ping_at {
            self.ping_at = now + self.ping_every;
            Due::Ping
        } else {
            Due::Nothing
        }
    }
}

/// The socket went away, or stopped reading for longer than a write may take.
pub struct Gone;

/// The sending half of a socket. Every write is bounded in time: a client that stops reading
/// must not keep its session (and its eviction) waiting forever.
///
/// Frames are queued and go out on the next flush. Every flush is a system call and, with
/// `TCP_NODELAY`, a packet the client must wake up for, so a flush takes along everything else
/// that is ready by then: under load, an ack, the pushes queued meanwhile and the sender's own
/// copy of its message leave in one write rather than one each.
struct Writer {
    sink: Sink,
    /// Whether frames were queued since the last flush.
    unflushed: bool,
}

/// The most pushes one flush takes from the mailbox, so that a busy mailbox cannot hold the
/// session away from its other duties (reading, pings) for long.
const MAX_PUSHES_PER_FLUSH: usize = 64;

impl Writer {
    fn new(sink: Sink) -> Writer {
        Writer { sink, unflushed: false }
    }

    async fn bounded<F: Future<Output = Result<(), axum::Error>>>(write: F) -> Result<(), Gone> {
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// Writes one frame now.
    async fn send(&mut self, message: Message) -> Result<(), Gone> {
        self.queue(message).await?;
        self.flush().await
    }

    /// Queues a frame for the next flush.
    async fn queue(&mut self, message: Message) -> Result<(), Gone> {
        self.unflushed = true;
        Self::bounded(self.sink.feed(message)).await
    }

    /// Flushes what is queued, if anything, together with the replies that are ready and the
    /// pushes already waiting in the mailbox.
    async fn flush_with(&mut self, session: &Session, ops: &mut OpQueue<()>) -> Result<(), Gone> {
        if !self.unflushed {
            return Ok(());
        }
        while let Some((reply, ())) = ops.ready_reply() {
            self.queue_text(reply.into()).await?;
        }
        for _ in 0..MAX_PUSHES_PER_FLUSH {
            match session.frames.try_recv() {
                Ok(push) if !session.is_new(&push) => {}
                Ok(push) => self.queue_text(push.frame).await?,
                Err(_) => break,
            }
        }
        self.flush().await
    }
}

impl Outbox for Writer {
    async fn queue_text(&mut self, frame: Utf8Bytes) -> Result<(), Gone> {
        self.queue(Message::Text(frame)).await
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        self.unflushed = false;
        Self::bounded(self.sink.flush()).await
    }
}
