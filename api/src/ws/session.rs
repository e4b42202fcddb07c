//! One connected socket: registration with the hub and presence, the optional replay of what a
//! resuming client missed (read from the user's feed), then the loop that reads client ops,
//! writes pushes and replies, and keeps the connection alive.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::OptionFuture;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream, StreamExt};
use futures_util::{Future, FutureExt, SinkExt};
use serde_json::Value;
use switchboard_ingest::Origin;
use switchboard_projector::feed::Entry;
use switchboard_schemas::{SessionClosed, SessionOpened, UserId};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, ClientFrame, Op};
use super::slots::Slot;
use crate::error::ApiError;
use crate::hub::{MAILBOX_CAPACITY, Mailbox, Push, Resume, ResumeToken, with_token};
use crate::state::AppState;
use crate::{calls, chat, locations, sync};

/// Ops read but not yet answered before the socket stops reading (backpressure): the ones waiting
/// for their turn and the ones waiting for their reply.
const MAX_PENDING_OPS: usize = 32;

/// The longest a single write to a socket may take before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a socket the server closes is kept open for the client's answering close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(5);

/// Close codes: 1001 going away, 1009 too big, 1013 try again later, 4000 idle, 4008 too slow.
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_TRY_AGAIN: u16 = 1013;
const CLOSE_IDLE: u16 = 4000;
const CLOSE_TOO_SLOW: u16 = 4008;

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// The reply frame to an op, once it is ready.
type Reply = Pin<Box<dyn Future<Output = String> + Send>>;

/// An op taking its turn: done once the op has taken its place in the order of the socket's ops
/// (a send: its message is in the log's hands; any other op: done), with its reply to come.
type Turn = Pin<Box<dyn Future<Output = Reply> + Send>>;

pub struct Session {
    state: AppState,
    user: UserId,
    id: Arc<str>,
    frames: flume::Receiver<Push>,
    evicted: CancellationToken,
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
        let writer = Writer::new(sink);
        match Box::pin(Session::open(state, user, device)).await {
            Ok(session) => session.run(writer, stream, resume).await,
            Err(error) => Box::pin(close_for_now(writer, stream, &error)).await,
        }
    }
}

impl Session {
    /// Registers a socket of `user`; fails when the user's feed cannot be followed now.
    async fn open(
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

    /// Greets the client, serves the socket for as long as it stays open, and closes the session.
    async fn run(mut self, writer: Writer, stream: Stream, resume: Option<Resume>) {
        if let Some((writer, stream)) = Box::pin(self.greet(writer, stream, resume)).await {
            self.serve(writer, stream).await;
        }
        Box::pin(self.close()).await;
    }

    /// Sends `ready`, then what a resume missed or why it cannot be replayed. Hands the socket
    /// back to be served, or nothing once it is closed or gone.
    async fn greet(
        &mut self,
        mut writer: Writer,
        stream: Stream,
        resume: Option<Resume>,
    ) -> Option<(Writer, Stream)> {
        let replay = match resume {
            None => None,
            Some(Resume::Retired) => Some(Replay::Refused(ApiError::sync_required(
                "the token is of a kind this server no longer resumes from",
            ))),
            Some(Resume::From(token)) => match self.plan_replay(token).await {
                Ok(replay) => Some(replay),
                Err(error) => {
                    close_for_now(writer, stream, &error).await;
                    return None;
                }
            },
        };
        let heartbeat = self.state.config.ping_interval.0.as_millis();
        let (resumed, token) = match &replay {
            None => (None, self.registered_at),
            Some(Replay::From { token, .. }) => (Some(true), *token),
            Some(Replay::Refused(_)) => (Some(false), self.registered_at),
        };
        let ready = protocol::ready(self.user, &self.id, &token.to_string(), heartbeat, resumed);
        writer.text(ready).await.ok()?;
        match replay {
            None => {}
            Some(Replay::Refused(refusal)) => {
                writer.text(protocol::error(Value::Null, &refusal)).await.ok()?;
            }
            Some(Replay::From { token, first }) => {
                match self.replay(&mut writer, token, first).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        close_for_now(writer, stream, &error).await;
                        return None;
                    }
                    Err(Gone) => return None,
                }
            }
        }
        Some((writer, stream))
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
        writer: &mut Writer,
        token: ResumeToken,
        mut page: Vec<Entry>,
    ) -> Result<Result<(), ApiError>, Gone> {
        let until = self.registered_at.seq;
        let mut last = token.seq;
        while last < until && !page.is_empty() {
            for entry in page.iter().take_while(|entry| entry.seq <= until) {
                let at = ResumeToken { epoch: token.epoch, seq: entry.seq, at: entry.at };
                writer.queue(Message::Text(with_token(&entry.frame, &at))).await?;
                metrics::counter!("resume_events_total").increment(1);
                last = entry.seq;
            }
            writer.flush().await?;
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
        // Ops take their turns one at a time, in the order they came; a send's turn ends once its
        // message is in the log's hands, so the next op need not wait for the send to be durable.
        // Replies go out in the order of the ops.
        let mut pending: VecDeque<Utf8Bytes> = VecDeque::new();
        let mut turn: Option<Turn> = None;
        let mut replies: FuturesOrdered<Reply> = FuturesOrdered::new();
        let close = loop {
            if turn.is_none()
                && let Some(text) = pending.pop_front()
            {
                turn =
                    Some(Box::pin(take_turn(self.state.clone(), self.user, self.id.clone(), text)));
            }
            // Each branch only queues what it writes; the flush below sends it together with
            // whatever else is ready by then.
            let queued = tokio::select! {
                _ = self.state.shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
                _ = self.evicted.cancelled() => break Some((CLOSE_TOO_SLOW, "too slow to keep up; reconnect and resume")),
                () = &mut timer => {
                    let due = keepalive.due(Instant::now());
                    timer.as_mut().reset(keepalive.next());
                    match due {
                        Due::Idle => break Some((CLOSE_IDLE, "no activity")),
                        Due::Ping => writer.queue(Message::Ping(Default::default())).await,
                        Due::Nothing => Ok(()),
                    }
                }
                push = self.frames.recv_async() => match push {
                    Ok(push) if push.seq != 0 && push.seq <= self.delivered => Ok(()),
                    Ok(push) => writer.queue(Message::Text(push.frame)).await,
                    Err(flume::RecvError::Disconnected) => break None,
                },
                Some(reply) = OptionFuture::from(turn.as_mut()), if turn.is_some() => {
                    turn = None;
                    replies.push_back(reply);
                    Ok(())
                }
                Some(reply) = replies.next(), if !replies.is_empty() => {
                    writer.queue(Message::Text(reply.into())).await
                }
                message = stream.next(), if pending.len() + replies.len() < MAX_PENDING_OPS => {
                    keepalive.heard(Instant::now());
                    match message {
                        Some(Ok(Message::Text(text))) if text.len() > config.max_frame_bytes => {
                            writer.queue_text(protocol::error(Value::Null, &ApiError::frame_too_large(config.max_frame_bytes))).await
                        }
                        Some(Ok(Message::Text(text))) => {
                            pending.push_back(text);
                            Ok(())
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let error = ApiError::bad_request("binary frames are not part of the protocol; send JSON text");
                            writer.queue_text(protocol::error(Value::Null, &error)).await
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
                            break too_big.then_some((CLOSE_TOO_BIG, "frame too large"));
                        }
                    }
                }
            };
            let written = match queued {
                Ok(()) => writer.flush_with(&self.frames, self.delivered, &mut replies).await,
                Err(gone) => Err(gone),
            };
            if written.is_err() {
                break None;
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame { code, reason: reason.into() };
            if writer.send(Message::Close(Some(frame))).await.is_ok() {
                finish_close_handshake(&mut stream).await;
            }
        }
    }

    async fn close(self) {
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
    let close = CloseFrame { code: CLOSE_TRY_AGAIN, reason: "try again later".into() };
    if writer.text(protocol::error(Value::Null, error)).await.is_ok()
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
struct Gone;

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

    async fn text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), Gone> {
        self.send(Message::Text(text.into())).await
    }

    /// Queues a frame for the next flush.
    async fn queue(&mut self, message: Message) -> Result<(), Gone> {
        self.unflushed = true;
        Self::bounded(self.sink.feed(message)).await
    }

    async fn queue_text(&mut self, text: String) -> Result<(), Gone> {
        self.queue(Message::Text(text.into())).await
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        self.unflushed = false;
        Self::bounded(self.sink.flush()).await
    }

    /// Flushes what is queued, if anything, together with the replies that are ready and the
    /// pushes already waiting in the mailbox.
    async fn flush_with(
        &mut self,
        mailbox: &flume::Receiver<Push>,
        delivered: u64,
        replies: &mut FuturesOrdered<Reply>,
    ) -> Result<(), Gone> {
        if !self.unflushed {
            return Ok(());
        }
        // Polling the replies here, with a waker that does nothing, loses no wake-up: the session
        // loop polls them again, with its own waker, before it waits.
        while let Some(Some(reply)) = replies.next().now_or_never() {
            self.queue_text(reply).await?;
        }
        for _ in 0..MAX_PUSHES_PER_FLUSH {
            match mailbox.try_recv() {
                Ok(push) if push.seq != 0 && push.seq <= delivered => {}
                Ok(push) => self.queue(Message::Text(push.frame)).await?,
                Err(_) => break,
            }
        }
        self.flush().await
    }
}

/// Takes one client frame's turn: see [`Turn`].
async fn take_turn(state: AppState, user: UserId, session: Arc<str>, text: Utf8Bytes) -> Reply {
    let ClientFrame { reference, op } = match protocol::parse(&text) {
        Ok(frame) => frame,
        Err((reference, error)) => return ready(protocol::error(reference, &error)),
    };
    match op {
        Op::Send(request) => match chat::submit(&state, user, &session, request).await {
            Ok(sending) => Box::pin(async move { reply(reference, as_json(sending.await)) }),
            Err(error) => ready(reply(reference, Err(error))),
        },
        op => ready(perform(&state, user, &session, reference, op).await),
    }
}

fn ready(reply: String) -> Reply {
    Box::pin(std::future::ready(reply))
}

/// The ack or error frame answering the op `reference` named.
fn reply(reference: Value, result: Result<Value, ApiError>) -> String {
    match result {
        Ok(result) => protocol::ack(reference, result),
        Err(error) => {
            metrics::counter!("api_errors_total", "code" => error.code).increment(1);
            protocol::error(reference, &error)
        }
    }
}

/// Performs an op whole and returns its reply frame ([`take_turn`] splits sends in two).
async fn perform(state: &AppState, user: UserId, trace: &str, reference: Value, op: Op) -> String {
    let result = match op {
        Op::Ping => return protocol::pong(reference),
        Op::Send(request) => as_json(chat::send(state, user, trace, request).await),
        Op::Edit(e) => {
            as_json(chat::edit(state, user, trace, e.conversation_id, e.message_id, &e.body).await)
        }
        Op::Delete(m) => {
            as_json(chat::delete(state, user, trace, m.conversation_id, m.message_id).await)
        }
        Op::Read(m) => {
            as_json(chat::mark_read(state, user, trace, m.conversation_id, m.message_id).await)
        }
        Op::Typing(t) => {
            as_json(chat::typing(state, user, trace, t.conversation_id, t.active).await)
        }
        Op::CallInvite(invite) => as_json(calls::invite(state, user, trace, invite).await),
        Op::CallAccept(c) => as_json(calls::accept(state, user, trace, c.call_id).await),
        Op::CallDecline(c) => as_json(calls::decline(state, user, trace, c.call_id).await),
        Op::CallEnd(c) | Op::RoomLeave(c) => {
            as_json(calls::end(state, user, trace, c.call_id).await)
        }
        Op::CallSignal(signal) => as_json(calls::signal(state, user, trace, signal).await),
        Op::RoomStart(room) => as_json(calls::start_room(state, user, trace, room).await),
        Op::RoomJoin(c) => as_json(calls::join_room(state, user, trace, c.call_id).await),
        Op::ShareLocation(request) => as_json(locations::share(state, user, trace, request).await),
        Op::UpdateLocation(request) => {
            as_json(locations::update(state, user, trace, request).await)
        }
        Op::StopLocation(s) => {
            as_json(locations::stop(state, user, trace, s.conversation_id).await)
        }
        Op::Sync(request) => as_json(sync::sync(state, user, request).await),
    };
    reply(reference, result)
}

fn as_json<T: serde::Serialize>(result: Result<T, ApiError>) -> Result<Value, ApiError> {
    result.and_then(|r| serde_json::to_value(r).map_err(|e| ApiError::internal(e.to_string())))
}
