//! One Socket.IO socket: the [`Session`] of a `/v1/ws` socket, with its frames as events. A frame
//! `{"op": OP, …}` is emitted as event `OP`, a pushed `{"op": "event", "type": TYPE, …}` as event
//! `TYPE`, each with the whole frame as its argument; an event from the client is the op of its
//! name, with its argument's fields, and its acknowledgement gets the reply frame.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value as EventData};
use socketioxide::socket::Socket;
use tokio_util::sync::CancellationToken;

use super::{Admission, Admitted};
use crate::error::ApiError;
use crate::hub::MAILBOX_CAPACITY;
use crate::state::AppState;
use crate::ws::ops::{MAX_PENDING_OPS, OpQueue};
use crate::ws::protocol;
use crate::ws::session::{Closing, GOING_AWAY, Gone, Outbox, Session, TOO_SLOW, TRY_AGAIN};

/// Packets that may wait for a socket's transport, like the pushes that may wait for a
/// `/v1/ws` socket: past that, the client is too slow and is disconnected.
pub const MAX_QUEUED_PACKETS: usize = MAILBOX_CAPACITY;

/// When a client with as many ops under way as a socket may have should try another.
const OPS_FULL_RETRY: Duration = Duration::from_secs(1);

/// An op from the client, with the acknowledgement its reply goes to, if it asked for one.
type ClientOp = (Utf8Bytes, Option<AckSender>);

/// Serves a socket that [`admit`](super::admit) let in, until it disconnects.
pub async fn connect(
    socket: SocketRef,
    State(state): State<AppState>,
    Extension(admission): Extension<Admission>,
) {
    let Some(Admitted { user, device, resume, places: _places }) = admission.take() else {
        return;
    };
    // Registered before anything waits, so that no op the client sends at once is missed.
    let (ops, received) = flume::bounded(MAX_PENDING_OPS);
    socket.on_fallback(Ops { ops, max_frame_bytes: state.config.max_frame_bytes });
    let gone = CancellationToken::new();
    socket.on_disconnect({
        let gone = gone.clone();
        async move || gone.cancel()
    });
    let mut session = match Session::open(state, user, device).await {
        Ok(session) => session,
        Err(error) => return close_for_now(socket, &error),
    };
    let mut events = Events(socket.clone());
    match session.greet(&mut events, resume).await {
        Ok(Ok(())) => {
            if let Some(closing) = serve(&session, &socket, &received, &gone).await {
                close(socket, closing);
            }
        }
        Ok(Err(error)) => close_for_now(socket, &error),
        Err(Gone) => {}
    }
    session.close().await;
}

/// Emits pushes and replies until the socket disconnects, or says why the server closes it.
async fn serve(
    session: &Session,
    socket: &SocketRef,
    received: &flume::Receiver<ClientOp>,
    gone: &CancellationToken,
) -> Option<Closing> {
    let mut ops = OpQueue::new(session.state.clone(), session.user, session.id.clone());
    loop {
        let sent = tokio::select! {
            () = gone.cancelled() => return None,
            () = session.state.shutdown.cancelled() => return Some(GOING_AWAY),
            () = session.evicted.cancelled() => return Some(TOO_SLOW),
            push = session.frames.recv_async() => match push {
                Ok(push) if !session.is_new(&push) => Ok(()),
                Ok(push) => emit(socket, push.frame),
                Err(flume::RecvError::Disconnected) => return None,
            },
            (reply, ack) = ops.next_reply() => {
                // The client asked for no acknowledgement: the reply goes nowhere.
                if let Some(ack) = ack {
                    acknowledge(ack, reply);
                }
                Ok(())
            }
            op = received.recv_async(), if !ops.is_full() => match op {
                Ok((frame, ack)) => {
                    ops.push(frame, ack);
                    Ok(())
                }
                Err(flume::RecvError::Disconnected) => return None,
            },
        };
        if sent.is_err() {
            // The transport holds as many packets as it may: the client does not keep up.
            return Some(TOO_SLOW);
        }
    }
}

/// Closes a socket that cannot be served now, as `/v1/ws` does: the error, then `TRY_AGAIN`.
fn close_for_now(socket: SocketRef, error: &ApiError) {
    tracing::warn!(code = error.code, message = %error.message, "socket closed for now");
    let _ = emit(&socket, protocol::error(Value::Null, error).into());
    close(socket, TRY_AGAIN);
}

/// Tells the client why it is disconnected (a `close` event with the close code and reason of
/// `/v1/ws`), then disconnects it.
fn close(socket: SocketRef, Closing { code, reason }: Closing) {
    let frame = json!({ "op": "close", "code": code, "reason": reason }).to_string();
    let _ = emit(&socket, frame.into());
    let _ = socket.disconnect();
}

fn acknowledge(ack: AckSender, reply: String) {
    if let Ok(reply) = RawValue::from_string(reply) {
        let _ = ack.send(&reply);
    }
}

/// Where a session's frames go on Socket.IO: emitted as events at once.
struct Events(SocketRef);

impl Outbox for Events {
    async fn queue_text(&mut self, frame: Utf8Bytes) -> Result<(), Gone> {
        emit(&self.0, frame)
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        Ok(())
    }
}

/// The event name a frame goes under: its `type` for a pushed event, its `op` otherwise.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

/// Emits a `/v1/ws` frame as its event; fails when the transport holds as much as it may.
fn emit(socket: &SocketRef, frame: Utf8Bytes) -> Result<(), Gone> {
    let Head { op, kind } = serde_json::from_str(&frame).map_err(|_| Gone)?;
    let name = kind.unwrap_or(op).into_owned();
    let payload = RawValue::from_string(frame.to_string()).map_err(|_| Gone)?;
    socket.emit(name, &payload).map_err(|_| Gone)
}

/// Takes every event of a socket as an op for its session. Socket.IO calls it as each event
/// arrives, in order, so the ops keep the order they were sent in.
struct Ops {
    ops: flume::Sender<ClientOp>,
    max_frame_bytes: usize,
}

impl Ops {
    /// The `/v1/ws` frame an event stands for: its argument's fields, with the event's name as
    /// `op`.
    fn frame(
        &self,
        socket: &Arc<Socket>,
        event: &mut EventData,
        ack: &Option<i64>,
    ) -> Result<Utf8Bytes, ApiError> {
        if event.len() > self.max_frame_bytes {
            return Err(ApiError::frame_too_large(self.max_frame_bytes));
        }
        let Ok(Event(op)) = Event::from_message_parts(socket, event, ack) else {
            return Err(ApiError::bad_request("the event has no name"));
        };
        let mut fields = match TryData::<Value>::from_message_parts(socket, event, ack) {
            Ok(TryData(Ok(Value::Object(fields)))) => fields,
            Ok(TryData(Ok(Value::Null) | Err(_))) => Map::new(),
            Ok(TryData(Ok(_))) => {
                return Err(ApiError::bad_request(
                    "an op's argument is a JSON object of its fields",
                ));
            }
        };
        fields.insert("op".into(), op.into());
        Ok(Value::Object(fields).to_string().into())
    }
}

impl MessageHandler<LocalAdapter, Ops> for Ops {
    fn call(&self, socket: Arc<Socket>, mut event: EventData, ack: Option<i64>) {
        let reply_to = match AckSender::from_message_parts(&socket, &mut event, &ack) {
            Ok(sender) => ack.is_some().then_some(sender),
        };
        let refused = match self.frame(&socket, &mut event, &ack) {
            Ok(frame) => match self.ops.try_send((frame, reply_to)) {
                Ok(()) | Err(flume::TrySendError::Disconnected(_)) => return,
                Err(flume::TrySendError::Full((_, reply_to))) => {
                    (reply_to, ApiError::rate_limited(OPS_FULL_RETRY))
                }
            },
            Err(error) => (reply_to, error),
        };
        if let (Some(ack), error) = refused {
            acknowledge(ack, protocol::error(Value::Null, &error));
        }
    }
}
