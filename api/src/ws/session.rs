//! One connected socket: registration with the hub and presence, the optional replay of what a
//! resuming client missed, then the loop that reads client ops, writes pushes and replies, and
//! keeps the connection alive.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::{Future, SinkExt};
use serde_json::Value;
use switchboard_ingest::Origin;
use switchboard_ingest::log::Cursor;
use switchboard_schemas::{Codec, SessionClosed, SessionOpened, UserId};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::protocol::{self, ClientFrame, Op};
use crate::chat;
use crate::error::ApiError;
use crate::hub::{MAILBOX_CAPACITY, Mailbox, ResumeToken, Router};
use crate::state::AppState;

/// Ops read ahead of the one being processed before the socket stops reading (backpressure).
const MAX_PENDING_OPS: usize = 32;

/// Close codes: 1001 going away, 1008 policy, 1009 too big, 4000 idle, 4008 too slow.
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_IDLE: u16 = 4000;
const CLOSE_TOO_SLOW: u16 = 4008;

type Sink = SplitSink<WebSocket, Message>;
type Reply = Pin<Box<dyn Future<Output = String> + Send>>;

pub struct Session {
    state: AppState,
    user: UserId,
    id: Arc<str>,
    frames: mpsc::Receiver<Utf8Bytes>,
    evicted: CancellationToken,
    /// The hub's position when this socket registered: pushes cover everything after it.
    registered_at: Cursor,
}

impl Session {
    pub async fn open(state: AppState, user: UserId, device: Option<String>) -> Session {
        let id: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let (sender, frames) = mpsc::channel(MAILBOX_CAPACITY);
        let evicted = CancellationToken::new();
        let mailbox = Mailbox { session_id: id.clone(), frames: sender, evicted: evicted.clone() };
        let registered_at = state.hub.register(user, mailbox);
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
        Session { state, user, id, frames, evicted, registered_at }
    }

    pub async fn run(mut self, socket: WebSocket, resume: Option<Cursor>) {
        let (mut sink, stream) = socket.split();
        let ready_token = ResumeToken::encode(resume.as_ref().unwrap_or(&self.registered_at));
        let heartbeat = self.state.config.ping_interval.0.as_millis();
        let ready = protocol::ready(self.user, &self.id, &ready_token, heartbeat);
        let mut ok = sink.send(Message::Text(ready.into())).await.is_ok();
        if let (true, Some(from)) = (ok, resume) {
            ok = self.replay(&mut sink, from).await.is_ok();
        }
        if ok {
            self.serve(sink, stream).await;
        }
        self.close().await;
    }

    /// Sends the events routed to this user between `from` and the registration point.
    async fn replay(&self, sink: &mut Sink, from: Cursor) -> Result<(), axum::Error> {
        let until = &self.registered_at;
        let mut cursor = Cursor::default();
        let mut missed = 0u64;
        for (topic, partition, end) in until.iter() {
            let start = from.get(topic, partition).unwrap_or(0).min(end);
            missed += end - start;
            cursor.set(topic, partition, start);
        }
        if missed as usize > self.state.config.resume_max_events {
            let error = ApiError::bad_request(format!(
                "the token is {missed} events behind, more than the {} a resume replays; reload history over HTTP",
                self.state.config.resume_max_events
            ));
            let frame = protocol::error(Value::Null, &ApiError { code: "resume_too_old", ..error });
            return sink.send(Message::Text(frame.into())).await;
        }
        if missed == 0 {
            return Ok(());
        }
        let state = &self.state;
        let result: Result<(), ApiError> = async {
            let mut reader = state.ingest.log().reader(cursor.clone()).await?;
            let mut router = Router::new(state.store.clone(), state.presence.clone());
            let codec = Codec::new();
            let behind = |c: &Cursor| until.iter().any(|(t, p, end)| c.get(t, p).unwrap_or(0) < end);
            while behind(&cursor) {
                for record in reader.next_batch(512).await? {
                    let position = record.position;
                    if until.has_passed(position) && !cursor.has_passed(position) {
                        cursor.advance(position);
                        let Ok(event) = codec.decode(&record.value) else { continue };
                        if let Some(route) = router.route(&event).await?
                            && route.recipients.contains(&self.user)
                        {
                            let frame = route.frame(&ResumeToken::encode(&cursor));
                            sink.send(Message::Text(frame)).await.map_err(|e| ApiError::internal(e.to_string()))?;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(error) => {
                tracing::warn!(code = error.code, message = %error.message, "resume failed");
                sink.send(Message::Text(protocol::error(Value::Null, &error).into())).await
            }
        }
    }

    async fn serve(&mut self, mut sink: Sink, mut stream: futures_util::stream::SplitStream<WebSocket>) {
        let config = &self.state.config;
        let mut ping = tokio::time::interval(config.ping_interval.0);
        ping.tick().await;
        let idle = sleep_until(Instant::now() + config.idle_timeout.0);
        tokio::pin!(idle);
        let mut pending: VecDeque<Utf8Bytes> = VecDeque::new();
        let mut in_flight: Option<Reply> = None;
        let close = loop {
            if in_flight.is_none()
                && let Some(text) = pending.pop_front()
            {
                in_flight = Some(Box::pin(handle(self.state.clone(), self.user, self.id.clone(), text)));
            }
            tokio::select! {
                _ = self.state.shutdown.cancelled() => break Some((CLOSE_GOING_AWAY, "server shutting down")),
                _ = self.evicted.cancelled() => break Some((CLOSE_TOO_SLOW, "too slow to keep up; reconnect and resume")),
                _ = &mut idle => break Some((CLOSE_IDLE, "no activity")),
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() { break None }
                }
                frame = self.frames.recv() => {
                    let Some(frame) = frame else { break None };
                    if write_pushes(&mut sink, frame, &mut self.frames).await.is_err() { break None }
                }
                reply = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    if sink.send(Message::Text(reply.into())).await.is_err() { break None }
                }
                message = stream.next(), if pending.len() < MAX_PENDING_OPS => {
                    idle.as_mut().reset(Instant::now() + config.idle_timeout.0);
                    match message {
                        Some(Ok(Message::Text(text))) if text.len() > config.max_frame_bytes => {
                            let error = ApiError::payload_too_large(config.max_frame_bytes);
                            let error = ApiError { code: "frame_too_large", ..error };
                            if sink.send(Message::Text(protocol::error(Value::Null, &error).into())).await.is_err() { break None }
                        }
                        Some(Ok(Message::Text(text))) => pending.push_back(text),
                        Some(Ok(Message::Binary(_))) => {
                            let error = ApiError::bad_request("binary frames are not part of the protocol; send JSON text");
                            if sink.send(Message::Text(protocol::error(Value::Null, &error).into())).await.is_err() { break None }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => break None,
                        Some(Err(error)) => {
                            tracing::debug!(%error, "socket read failed");
                            let too_big = error.to_string().contains("too long") || error.to_string().contains("too big");
                            break too_big.then_some((CLOSE_TOO_BIG, "frame too large"));
                        }
                    }
                }
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame { code, reason: reason.into() };
            let _ = sink.send(Message::Close(Some(frame))).await;
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
        if let Err(error) = state.ingest.append(&Origin::user(self.user, &*self.id), closed.into()).await {
            tracing::warn!(%error, "session-closed event not logged");
        }
    }
}

/// Writes one push and whatever else is already queued, then flushes once.
async fn write_pushes(
    sink: &mut Sink,
    first: Utf8Bytes,
    queue: &mut mpsc::Receiver<Utf8Bytes>,
) -> Result<(), axum::Error> {
    sink.feed(Message::Text(first)).await?;
    for _ in 0..64 {
        match queue.try_recv() {
            Ok(frame) => sink.feed(Message::Text(frame)).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

/// Processes one client frame and returns the reply frame.
async fn handle(state: AppState, user: UserId, session: Arc<str>, text: Utf8Bytes) -> String {
    let ClientFrame { reference, op } = match protocol::parse(&text) {
        Ok(frame) => frame,
        Err((reference, error)) => return protocol::error(reference, &error),
    };
    let trace = &*session;
    let result = match op {
        Op::Ping => return protocol::pong(reference),
        Op::Send(request) => as_json(chat::send(&state, user, trace, request).await),
        Op::Edit(e) => {
            as_json(chat::edit(&state, user, trace, e.conversation_id, e.message_id, &e.body).await)
        }
        Op::Delete(m) => {
            as_json(chat::delete(&state, user, trace, m.conversation_id, m.message_id).await)
        }
        Op::Read(m) => {
            as_json(chat::mark_read(&state, user, trace, m.conversation_id, m.message_id).await)
        }
        Op::Typing(t) => {
            as_json(chat::typing(&state, user, trace, t.conversation_id, t.active).await)
        }
    };
    match result {
        Ok(result) => protocol::ack(reference, result),
        Err(error) => {
            metrics::counter!("api_errors_total", "code" => error.code).increment(1);
            protocol::error(reference, &error)
        }
    }
}

fn as_json<T: serde::Serialize>(result: Result<T, ApiError>) -> Result<Value, ApiError> {
    result.and_then(|r| serde_json::to_value(r).map_err(|e| ApiError::internal(e.to_string())))
}
