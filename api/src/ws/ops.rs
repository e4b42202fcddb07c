//! A socket's ops in order: they take their turns one at a time, in the order they came, and their
//! replies go out in that order. A send's turn ends once its message is in the log's hands, so the
//! next op need not wait for the send to be durable. Shared by `/v1/ws` and `/socket.io/`, which
//! differ only in how an op arrives and how its reply leaves.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::OptionFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::{Future, FutureExt};
use serde_json::Value;
use switchboard_schemas::UserId;

use super::protocol::{self, ClientFrame, Op};
use crate::error::ApiError;
use crate::state::AppState;
use crate::{calls, chat, locations, sync};

/// Ops read but not yet answered before a socket stops reading (backpressure): the ones waiting
/// for their turn and the ones waiting for their reply.
pub const MAX_PENDING_OPS: usize = 32;

/// The reply frame to an op, once it is ready.
type Reply = Pin<Box<dyn Future<Output = String> + Send>>;

/// An op taking its turn: done once the op has taken its place in the order of the socket's ops
/// (a send: its message is in the log's hands; any other op: done), with its reply to come.
type Turn = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// The ops of one socket of `user`, each with what its reply goes back through (`T`: nothing on
/// a WebSocket, where replies share the socket's stream; an acknowledgement on Socket.IO).
pub struct OpQueue<T> {
    state: AppState,
    user: UserId,
    session: Arc<str>,
    pending: VecDeque<(Utf8Bytes, T)>,
    turn: Option<(Turn, T)>,
    replies: FuturesOrdered<Reply>,
    /// Where each of `replies` goes, in the same order.
    reply_to: VecDeque<T>,
}

impl<T> OpQueue<T> {
    pub fn new(state: AppState, user: UserId, session: Arc<str>) -> OpQueue<T> {
        OpQueue {
            state,
            user,
            session,
            pending: VecDeque::new(),
            turn: None,
            replies: FuturesOrdered::new(),
            reply_to: VecDeque::new(),
        }
    }

    /// Queues a client frame for its turn.
    pub fn push(&mut self, frame: Utf8Bytes, reply_to: T) {
        self.pending.push_back((frame, reply_to));
    }

    /// Whether as many ops wait as a socket may have under way: read no more until some are
    /// answered.
    pub fn is_full(&self) -> bool {
        self.pending.len() + self.replies.len() >= MAX_PENDING_OPS
    }

    /// The next reply, in the order of the ops; pending for as long as there is none. Safe to
    /// drop and call again: an op under way keeps its progress.
    pub async fn next_reply(&mut self) -> (String, T) {
        loop {
            if self.turn.is_none()
                && let Some((text, reply_to)) = self.pending.pop_front()
            {
                let turn = take_turn(self.state.clone(), self.user, self.session.clone(), text);
                self.turn = Some((Box::pin(turn), reply_to));
            }
            let turn = OptionFuture::from(self.turn.as_mut().map(|(turn, _)| turn));
            tokio::select! {
                Some(reply) = turn => {
                    let (_, reply_to) = self.turn.take().expect("a turn was under way");
                    self.replies.push_back(reply);
                    self.reply_to.push_back(reply_to);
                }
                Some(reply) = self.replies.next() => {
                    let reply_to = self.reply_to.pop_front().expect("every reply has its place");
                    return (reply, reply_to);
                }
                else => std::future::pending().await,
            }
        }
    }

    /// A reply that is ready now, if any. Polling with a waker that does nothing loses no
    /// wake-up: the socket polls [`next_reply`](Self::next_reply) again, with its own waker,
    /// before it waits.
    pub fn ready_reply(&mut self) -> Option<(String, T)> {
        let reply = self.replies.next().now_or_never()??;
        let reply_to = self.reply_to.pop_front().expect("every reply has its place");
        Some((reply, reply_to))
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
